//! Fault injection for tests: slow or unresponsive apiservers, dropped watch connections,
//! compacted history. The public handle is `KubeApiServer::faults()`; the binary also
//! serves these over `POST /_test/faults/...`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use super::state::State;

/// The switches every request and watch consults.
pub struct FaultState {
    delay_ms: AtomicU64,
    hung: watch::Sender<bool>,
    /// Bumped to make every open watch end (clients see the connection close).
    watch_drops: watch::Sender<u64>,
}

impl Default for FaultState {
    fn default() -> Self {
        Self { delay_ms: AtomicU64::new(0), hung: watch::channel(false).0, watch_drops: watch::channel(0).0 }
    }
}

impl FaultState {
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::Relaxed);
    }

    pub fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms.load(Ordering::Relaxed))
    }

    pub fn set_hung(&self, hung: bool) {
        self.hung.send_replace(hung);
    }

    pub fn drop_watches(&self) {
        self.watch_drops.send_modify(|generation| *generation += 1);
    }

    pub fn watch_drops(&self) -> watch::Receiver<u64> {
        self.watch_drops.subscribe()
    }

    /// Waits while the server is hung.
    pub async fn released(&self) {
        let mut hung = self.hung.subscribe();
        // The sender lives as long as `self`, so this only returns once released.
        let _ = hung.wait_for(|h| !*h).await;
    }

    /// What every API request goes through before it is answered.
    pub async fn gate(&self) {
        self.released().await;
        let delay = self.delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

/// The fault switches of a server, from `KubeApiServer::faults()`.
pub struct Faults<'a> {
    state: &'a State,
}

impl<'a> Faults<'a> {
    pub(super) fn new(state: &'a State) -> Self {
        Self { state }
    }

    /// Ends every open watch now; clients see their connection close.
    pub fn drop_watches(&self) {
        self.state.faults.drop_watches();
    }

    /// Forgets the event history: a watch from any version before now gets 410 Gone
    /// (`reason: Expired`), as after an etcd compaction.
    pub fn expire_history(&self) {
        self.state.store.expire_history();
    }

    /// Delays every API response by `delay` (zero: none).
    pub fn set_delay(&self, delay: Duration) {
        self.state.faults.set_delay(delay);
    }

    /// Stops answering: requests (and events on open watches) wait until `release`.
    pub fn hang(&self) {
        self.state.faults.set_hung(true);
    }

    pub fn release(&self) {
        self.state.faults.set_hung(false);
    }
}
