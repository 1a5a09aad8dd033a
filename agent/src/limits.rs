//! Bounds on what callers may hold open, so that no caller, however hostile,
//! can exhaust the agent: connections in all, and connections and watch streams
//! per peer. A peer is a pod, or, outside pods, the processes of one user.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub connections: usize,
    pub connections_per_peer: usize,
    pub streams_per_peer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { connections: 4096, connections_per_peer: 128, streams_per_peer: 1024 }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Refused {
    #[error("the agent holds its limit of {0} connections")]
    Connections(usize),
    #[error("{peer} holds its limit of {limit} connections to the agent")]
    PeerConnections { peer: String, limit: usize },
    #[error("{peer} holds its limit of {limit} open watch streams; close some, or watch several secrets in one stream")]
    PeerStreams { peer: String, limit: usize },
}

#[derive(Default)]
struct Held {
    connections: usize,
    streams: usize,
}

pub struct Admission {
    limits: Limits,
    state: Mutex<(usize, HashMap<String, Held>)>,
    last_warning: AtomicU64,
}

#[derive(Clone, Copy)]
enum Kind {
    Connection,
    Stream,
}

/// A held connection or stream; released when dropped.
pub struct Slot {
    admission: Arc<Admission>,
    peer: String,
    kind: Kind,
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Admission> {
        Arc::new(Admission { limits, state: Mutex::default(), last_warning: AtomicU64::new(0) })
    }

    pub fn connection(self: &Arc<Self>, peer: &str) -> Result<Slot, Refused> {
        let mut state = self.state.lock().expect("admission lock");
        let (total, peers) = &mut *state;
        if *total >= self.limits.connections {
            return Err(Refused::Connections(self.limits.connections));
        }
        let held = peers.entry(peer.to_owned()).or_default();
        if held.connections >= self.limits.connections_per_peer {
            return Err(Refused::PeerConnections { peer: peer.to_owned(), limit: self.limits.connections_per_peer });
        }
        held.connections += 1;
        *total += 1;
        Ok(Slot { admission: self.clone(), peer: peer.to_owned(), kind: Kind::Connection })
    }

    pub fn stream(self: &Arc<Self>, peer: &str) -> Result<Slot, Refused> {
        let mut state = self.state.lock().expect("admission lock");
        let held = state.1.entry(peer.to_owned()).or_default();
        if held.streams >= self.limits.streams_per_peer {
            return Err(Refused::PeerStreams { peer: peer.to_owned(), limit: self.limits.streams_per_peer });
        }
        held.streams += 1;
        Ok(Slot { admission: self.clone(), peer: peer.to_owned(), kind: Kind::Stream })
    }

    /// True at most once every ten seconds: a flood of refusals logs one line.
    pub fn should_warn(&self) -> bool {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let last = self.last_warning.load(Ordering::Relaxed);
        now >= last + 10 && self.last_warning.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    fn release(&self, peer: &str, kind: Kind) {
        let mut state = self.state.lock().expect("admission lock");
        let (total, peers) = &mut *state;
        if let Some(held) = peers.get_mut(peer) {
            match kind {
                Kind::Connection => {
                    held.connections -= 1;
                    *total -= 1;
                }
                Kind::Stream => held.streams -= 1,
            }
            if held.connections == 0 && held.streams == 0 {
                peers.remove(peer);
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.release(&self.peer, self.kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_per_peer_and_in_all_and_free_on_drop() {
        let a = Admission::new(Limits { connections: 3, connections_per_peer: 2, streams_per_peer: 1 });
        let c1 = a.connection("pod-a").unwrap();
        let _c2 = a.connection("pod-a").unwrap();
        assert!(matches!(a.connection("pod-a"), Err(Refused::PeerConnections { .. })));
        let _c3 = a.connection("pod-b").unwrap();
        assert!(matches!(a.connection("pod-c"), Err(Refused::Connections(3))));
        drop(c1);
        assert!(a.connection("pod-a").is_ok(), "a closed connection frees its slot");

        let s = a.stream("pod-a").unwrap();
        assert!(matches!(a.stream("pod-a"), Err(Refused::PeerStreams { .. })));
        assert!(a.stream("pod-b").is_ok());
        drop(s);
        assert!(a.stream("pod-a").is_ok());
        assert!(a.state.lock().unwrap().1.len() <= 3);
    }
}
