//! Decoded secrets, kept in memory for as long as somebody uses them.
//!
//! Each secret that was asked for has one state channel (`states`) holding its
//! current state: readers take the latest value without waiting, and
//! subscribers (see `hub`) are woken once per change however many there are,
//! connection by connection. A change is loaded
//! and decoded once, by the refresh task, never per reader.
//!
//! Plaintext is not kept forever: a secret nobody watches and nobody has read
//! for the idle TTL is dropped (its buffers zeroize on drop), and the next read
//! decrypts it again.
//!
//! Each state published after a change carries the instant the change was
//! first seen, so that each stream can tell how long the change took to reach
//! it (`hub`) without the cache tracking who has had what.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Mutex, OnceCell};

use crate::fanout::FanOut;
use crate::secret::{SecretId, SecretVersion};
use crate::source::{Change, ChangeReceiver, Held, Loaded, SecretSource, Unavailable};
use crate::states::Publisher;
pub use crate::states::Subscription;

const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);
const SWEEP_EVERY_AT_MOST: Duration = Duration::from_secs(60);

/// What is known of a secret now.
pub enum SecretState {
    /// The secret does not exist.
    Absent,
    /// `version` is the newest version that decoded; `error` is set when a newer
    /// revision exists that does not.
    Ready { version: Arc<SecretVersion>, error: Option<Arc<VersionError>> },
    /// The secret exists but no version of it has decoded yet.
    Failed(Arc<VersionError>),
}

/// A state as the cache publishes it.
pub struct Published {
    pub state: SecretState,
    /// When the change that led to this state was first seen (its announcement,
    /// even if an outage made the load wait); `None` for a first load, which
    /// no change caused.
    pub seen: Option<Instant>,
}

/// Why a revision could not be decoded (never contains a value).
#[derive(Debug)]
pub struct VersionError {
    pub revision: String,
    pub message: String,
}

impl SecretState {
    /// The revision of the last load attempt, good or bad.
    fn attempted_revision(&self) -> Option<&str> {
        match self {
            SecretState::Absent => None,
            SecretState::Ready { error: Some(e), .. } | SecretState::Failed(e) => Some(&e.revision),
            SecretState::Ready { version, .. } => Some(&version.revision),
        }
    }

    fn good(&self) -> Option<&Arc<SecretVersion>> {
        match self {
            SecretState::Ready { version, .. } => Some(version),
            _ => None,
        }
    }
}

struct Entry {
    /// Also marked changed, with the same state, whenever the source announces
    /// that who may read the secret changed, before it is loaded again:
    /// subscribers then check their access, even when no new value follows.
    state: OnceCell<Publisher>,
    /// Serializes loads of one secret, so an older load never overwrites a newer.
    loading: Mutex<()>,
    retries: AtomicU32,
    /// When it was last read, in milliseconds since the cache started.
    last_read: AtomicU64,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            state: OnceCell::new(),
            loading: Mutex::new(()),
            retries: AtomicU32::new(0),
            last_read: AtomicU64::new(0),
        }
    }
}

pub struct Cache {
    source: Arc<dyn SecretSource>,
    entries: RwLock<HashMap<SecretId, Arc<Entry>>>,
    idle_ttl: Duration,
    started: Instant,
    /// The number of entries, for the metrics.
    size: Gauge,
    fan_out: Arc<FanOut>,
}

impl Cache {
    /// A cache over `source` that drops a secret nobody watched or read for
    /// `idle_ttl`, and keeps `size` at the number of secrets it holds.
    pub fn new(source: Arc<dyn SecretSource>, idle_ttl: Duration, size: Gauge) -> Arc<Cache> {
        let fan_out = Arc::default();
        Arc::new(Cache { source, entries: RwLock::default(), idle_ttl, started: Instant::now(), size, fan_out })
    }

    /// Says when a new state is reaching many watch streams.
    pub fn fan_out(&self) -> Arc<FanOut> {
        self.fan_out.clone()
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn source(&self) -> &dyn SecretSource {
        self.source.as_ref()
    }

    /// The current state of `id`, loading it on first use (one load in flight
    /// per secret, however many callers wait for it).
    pub async fn state(&self, id: &SecretId) -> Result<Arc<Published>, Unavailable> {
        let entry = self.entry(id);
        entry.last_read.store(self.now_ms(), Ordering::Relaxed);
        Ok(self.sender(&entry, id).await?.borrow().clone())
    }

    /// A subscription that sees every later state of `id` (the latest, when
    /// it lags) and, as the same state again, every announcement that who may
    /// read it changed (see `Entry::state`). `connection` is the caller's
    /// connection: its subscribers are woken together (see `states`).
    pub async fn subscribe(&self, id: &SecretId, connection: u64) -> Result<Subscription, Unavailable> {
        let entry = self.entry(id);
        Ok(self.sender(&entry, id).await?.subscribe(connection))
    }

    fn entry(&self, id: &SecretId) -> Arc<Entry> {
        let existing = self.entries.read().expect("cache lock").get(id).cloned();
        match existing {
            Some(e) => e,
            None => {
                let mut entries = self.entries.write().expect("cache lock");
                let entry = entries.entry(id.clone()).or_default().clone();
                self.size.set(entries.len() as i64);
                entry
            }
        }
    }

    async fn sender<'e>(&self, entry: &'e Entry, id: &SecretId) -> Result<&'e Publisher, Unavailable> {
        if let Some(tx) = entry.state.get() {
            return Ok(tx);
        }
        let tx = entry
            .state
            .get_or_try_init(|| async {
                let _serial = entry.loading.lock().await;
                let state = match self.source.load(id, Held::default()).await? {
                    Loaded::Absent | Loaded::Unchanged => SecretState::Absent,
                    Loaded::Version(v) => SecretState::Ready { version: Arc::new(v), error: None },
                    Loaded::Invalid { revision, message } => {
                        tracing::warn!(secret = %id, %revision, %message, "secret cannot be decoded");
                        SecretState::Failed(Arc::new(VersionError { revision, message }))
                    }
                };
                Ok::<_, Unavailable>(Publisher::new(Arc::new(Published { state, seen: None })))
            })
            .await?;
        Ok(tx)
    }

    /// Follows the source's change announcements until it closes. Secrets nobody
    /// asked for are skipped: they cost nothing until first read.
    pub async fn run_refresh(self: Arc<Self>, mut changes: ChangeReceiver) {
        let every = (self.idle_ttl / 2).clamp(Duration::from_millis(100), SWEEP_EVERY_AT_MOST);
        let mut sweep = tokio::time::interval(every);
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    // Secrets nobody asked for cost nothing, not even a task.
                    Some(change) if self.entries.read().expect("cache lock").contains_key(&change.id) => {
                        tokio::spawn(self.clone().refresh(change));
                    }
                    Some(_) => {}
                    None => return,
                },
                _ = sweep.tick() => self.sweep(),
            }
        }
    }

    /// Reloads the changed secret if somebody asked for it, and publishes the
    /// new state if it differs. A backend outage keeps the last state and
    /// retries with backoff.
    pub fn refresh(self: Arc<Self>, change: Change) -> BoxFuture<'static, ()> {
        if change.access
            && let Some(tx) = self.entries.read().expect("cache lock").get(&change.id).and_then(|e| e.state.get())
        {
            // Who may read it changed: subscribers check at once, even if
            // the load takes long or fails (a content change needs no such
            // wake: its new state wakes them, and they check then).
            tx.announce();
        }
        self.refresh_seen(change.id, Instant::now())
    }

    /// `refresh` of a change first seen at `seen` (a retry keeps the instant;
    /// hence the boxed future: it schedules itself again).
    fn refresh_seen(self: Arc<Self>, id: SecretId, seen: Instant) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let Some(entry) = self.entries.read().expect("cache lock").get(&id).cloned() else {
                return;
            };
            let Some(tx) = entry.state.get() else { return };
            let _serial = entry.loading.lock().await;
            let published = tx.borrow().clone();
            let current = &published.state;
            let held = Held { revision: current.attempted_revision(), version: current.good().map(|v| &**v) };
            let next = match self.source.load(&id, held).await {
                Ok(Loaded::Unchanged) => None,
                Ok(Loaded::Absent) => (!matches!(current, SecretState::Absent)).then_some(SecretState::Absent),
                Ok(Loaded::Version(v)) => {
                    let v = match current.good() {
                        Some(old) => v.share_unchanged(old),
                        None => v,
                    };
                    Some(SecretState::Ready { version: Arc::new(v), error: None })
                }
                Ok(Loaded::Invalid { revision, message }) => {
                    tracing::warn!(secret = %id, %revision, %message, "new revision cannot be decoded; the last good one stays served");
                    let error = Arc::new(VersionError { revision, message });
                    Some(match current.good() {
                        Some(version) => SecretState::Ready { version: version.clone(), error: Some(error) },
                        None => SecretState::Failed(error),
                    })
                }
                Err(e) => {
                    let attempt = entry.retries.fetch_add(1, Ordering::Relaxed);
                    let wait = RETRY_FIRST.saturating_mul(1 << attempt.min(7)).min(RETRY_MAX);
                    tracing::warn!(secret = %id, error = %e, retry_in_ms = wait.as_millis() as u64, "cannot load the new revision; serving the last one");
                    let retry = self.clone().refresh_seen(id, seen);
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        retry.await;
                    });
                    return;
                }
            };
            entry.retries.store(0, Ordering::Relaxed);
            if let Some(state) = next {
                self.fan_out.begins(tx.receiver_count());
                tx.publish(Arc::new(Published { state, seen: Some(seen) }));
            }
        })
    }

    /// Forgets secrets nobody watches that are absent (so asking for random
    /// names cannot grow memory without bound) or idle past the TTL (their
    /// plaintext is zeroized as it drops), and entries whose first load failed.
    fn sweep(&self) {
        let idle_since = self.now_ms().saturating_sub(self.idle_ttl.as_millis() as u64);
        let mut entries = self.entries.write().expect("cache lock");
        entries.retain(|_, e| match e.state.get() {
            None => Arc::strong_count(e) > 1,
            Some(tx) if tx.receiver_count() > 0 => true,
            Some(tx) => {
                !matches!(tx.borrow().state, SecretState::Absent) && e.last_read.load(Ordering::Relaxed) >= idle_since
            }
        });
        self.size.set(entries.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use futures::FutureExt;

    use super::*;
    use crate::secret::tests::version;
    use crate::source::LoadFuture;

    /// A source whose content the test sets, counting loads and decodes.
    #[derive(Default)]
    struct Scripted {
        docs: std::sync::Mutex<HashMap<SecretId, (String, String)>>,
        broken: std::sync::Mutex<bool>,
        down: std::sync::Mutex<bool>,
        decodes: AtomicUsize,
    }

    impl Scripted {
        fn set(&self, id: &SecretId, revision: &str, json: &str) {
            self.docs.lock().unwrap().insert(id.clone(), (revision.into(), json.into()));
        }
    }

    impl SecretSource for Scripted {
        fn load<'a>(&'a self, id: &'a SecretId, held: Held<'a>) -> LoadFuture<'a> {
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if *self.down.lock().unwrap() {
                    return Err(Unavailable("backend down".into()));
                }
                let Some((rev, json)) = self.docs.lock().unwrap().get(id).cloned() else {
                    return Ok(Loaded::Absent);
                };
                if held.revision == Some(rev.as_str()) {
                    return Ok(Loaded::Unchanged);
                }
                self.decodes.fetch_add(1, Ordering::SeqCst);
                if *self.broken.lock().unwrap() {
                    return Ok(Loaded::Invalid { revision: rev, message: "bad".into() });
                }
                Ok(Loaded::Version(version(&rev, &[("k", rev.len() as u32, &json)])))
            }
            .boxed()
        }
    }

    /// A change announced for `id`, its readers included.
    fn changed(id: &SecretId) -> Change {
        Change { id: id.clone(), access: true }
    }

    fn values(published: &Published) -> String {
        use secrecy::ExposeSecret;
        match &published.state {
            SecretState::Ready { version, .. } => {
                version.documents["k"].doc.values.iter().map(|(k, v)| format!("{k}={}", v.expose_secret())).collect()
            }
            SecretState::Absent => "absent".into(),
            SecretState::Failed(_) => "failed".into(),
        }
    }

    #[tokio::test]
    async fn concurrent_first_reads_decode_once() {
        let src = Arc::new(Scripted::default());
        let id = SecretId::new("default", "app");
        src.set(&id, "1", r#"{"a":"1"}"#);
        let cache = Cache::new(src.clone(), Duration::from_secs(600), Gauge::default());
        let reads = (0..50).map(|_| cache.state(&id));
        for state in futures::future::join_all(reads).await {
            assert_eq!(values(&state.unwrap()), "a=1");
        }
        assert_eq!(src.decodes.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn changes_are_detected_and_unchanged_documents_shared() {
        let src = Arc::new(Scripted::default());
        let id = SecretId::new("default", "app");
        src.set(&id, "1", r#"{"a":"1"}"#);
        let cache = Cache::new(src.clone(), Duration::from_secs(600), Gauge::default());
        let mut rx = cache.subscribe(&id, 0).await.unwrap().receiver.clone();
        let first = rx.borrow_and_update().clone();

        // Same revision: nothing is decoded, nothing new published (the
        // announcement only marks the same state changed).
        cache.clone().refresh(changed(&id)).await;
        assert!(Arc::ptr_eq(&first, &rx.borrow_and_update()));
        assert_eq!(src.decodes.load(Ordering::SeqCst), 1);

        // New revision, same content (a re-encryption): the document is shared.
        src.set(&id, "22", r#"{"a":"1"}"#);
        cache.clone().refresh(changed(&id)).await;
        let second = rx.borrow_and_update().clone();
        let (SecretState::Ready { version: v1, .. }, SecretState::Ready { version: v2, .. }) =
            (&first.state, &second.state)
        else {
            panic!()
        };
        assert!(Arc::ptr_eq(&v1.documents["k"].doc, &v2.documents["k"].doc));
        assert_eq!(v2.documents["k"].key_version, 2);

        // New content: a new document.
        src.set(&id, "333", r#"{"a":"2"}"#);
        cache.clone().refresh(changed(&id)).await;
        let third = rx.borrow_and_update().clone();
        assert_eq!(values(&third), "a=2");
    }

    #[tokio::test]
    async fn a_bad_revision_keeps_the_last_good_values() {
        let src = Arc::new(Scripted::default());
        let id = SecretId::new("default", "app");
        src.set(&id, "1", r#"{"a":"1"}"#);
        let cache = Cache::new(src.clone(), Duration::from_secs(600), Gauge::default());
        cache.state(&id).await.unwrap();
        src.set(&id, "2", "ignored");
        *src.broken.lock().unwrap() = true;
        cache.clone().refresh(changed(&id)).await;
        let state = cache.state(&id).await.unwrap();
        let SecretState::Ready { error: Some(e), .. } = &state.state else { panic!("expected last good + error") };
        assert_eq!(e.revision, "2");
        assert_eq!(values(&state), "a=1");
        // Recovery on the next good revision.
        *src.broken.lock().unwrap() = false;
        src.set(&id, "3", r#"{"a":"3"}"#);
        cache.clone().refresh(changed(&id)).await;
        let state = cache.state(&id).await.unwrap();
        assert!(matches!(&state.state, SecretState::Ready { error: None, .. }));
        assert_eq!(values(&state), "a=3");
    }

    #[tokio::test]
    async fn an_outage_keeps_serving_and_retries() {
        let src = Arc::new(Scripted::default());
        let id = SecretId::new("default", "app");
        src.set(&id, "1", r#"{"a":"1"}"#);
        let cache = Cache::new(src.clone(), Duration::from_secs(600), Gauge::default());
        let mut rx = cache.subscribe(&id, 0).await.unwrap().receiver.clone();
        assert!(rx.borrow_and_update().seen.is_none(), "a first load is no change");
        *src.down.lock().unwrap() = true;
        src.set(&id, "2", r#"{"a":"2"}"#);
        let announced = Instant::now();
        cache.clone().refresh(changed(&id)).await;
        assert_eq!(values(&cache.state(&id).await.unwrap()), "a=1");
        *src.down.lock().unwrap() = false;
        // The announcement wakes subscribers at once; the new state follows the retry.
        let retried = rx.wait_for(|p| values(p) == "a=2");
        tokio::time::timeout(Duration::from_secs(5), retried).await.expect("retried").unwrap();
        let seen = rx.borrow().seen.expect("a change is stamped");
        assert!(seen >= announced && seen < announced + RETRY_FIRST, "stamped when announced, not when retried");
    }

    #[tokio::test]
    async fn unknown_secrets_are_lazy_and_absent_ones_swept() {
        let src = Arc::new(Scripted::default());
        let size = Gauge::default();
        let cache = Cache::new(src.clone(), Duration::from_secs(600), size.clone());
        let id = SecretId::new("default", "nope");
        cache.clone().refresh(changed(&id)).await;
        assert_eq!(size.get(), 0, "a change to a secret nobody asked for costs nothing");
        assert!(matches!(cache.state(&id).await.unwrap().state, SecretState::Absent));
        assert_eq!(size.get(), 1);
        let rx = cache.subscribe(&id, 0).await.unwrap().receiver.clone();
        cache.sweep();
        assert_eq!(size.get(), 1, "watched");
        drop(rx);
        cache.sweep();
        assert_eq!(size.get(), 0);
    }

    #[tokio::test]
    async fn plaintext_nobody_reads_or_watches_is_dropped_after_the_idle_ttl() {
        let src = Arc::new(Scripted::default());
        let id = SecretId::new("default", "app");
        src.set(&id, "1", r#"{"a":"1"}"#);
        let size = Gauge::default();
        let cache = Cache::new(src.clone(), Duration::from_millis(300), size.clone());
        let state = cache.state(&id).await.unwrap();
        let SecretState::Ready { version, .. } = &state.state else { panic!() };
        let doc = Arc::downgrade(&version.documents["k"].doc);
        drop(state);
        let watched = SecretId::new("default", "watched");
        src.set(&watched, "1", r#"{"w":"1"}"#);
        let sub = cache.subscribe(&watched, 0).await.unwrap();

        cache.sweep();
        assert_eq!(size.get(), 2, "read a moment ago");
        tokio::time::sleep(Duration::from_millis(400)).await;
        cache.sweep();
        assert_eq!(size.get(), 1, "the watched one stays however long");
        assert!(doc.upgrade().is_none(), "the idle document is dropped (and its values zeroized)");

        assert_eq!(values(&cache.state(&id).await.unwrap()), "a=1");
        assert_eq!(src.decodes.load(Ordering::SeqCst), 3, "the next read decrypts again");
        drop(sub);
    }

    #[tokio::test]
    async fn an_announced_change_touches_the_secret_before_it_loads() {
        let src = Arc::new(Scripted::default());
        let id = SecretId::new("default", "app");
        src.set(&id, "1", r#"{"a":"1"}"#);
        let cache = Cache::new(src.clone(), Duration::from_secs(600), Gauge::default());
        let mut sub = cache.subscribe(&id, 0).await.unwrap().receiver.clone();
        let before = sub.borrow_and_update().clone();
        cache.clone().refresh(changed(&id)).await;
        assert!(sub.has_changed().unwrap(), "a change of readers wakes subscribers, whatever the load finds");
        assert!(Arc::ptr_eq(&before, &sub.borrow_and_update()), "but publishes no new state");
        cache.clone().refresh(Change { id: id.clone(), access: false }).await;
        assert!(!sub.has_changed().unwrap(), "a new revision with the same content and readers wakes nobody");
    }
}
