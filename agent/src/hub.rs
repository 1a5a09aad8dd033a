//! Subscriptions and fan-out. Each watched reference follows its secret's state
//! channel in the cache and turns each state it sees into the events the
//! subscriber has not had yet. A subscriber that falls behind skips straight to
//! the latest state: nothing queues up on its behalf, and it never slows others.
//!
//! Access is checked for as long as a stream lives: on every wake-up (a new
//! state, a change announced for one of its secrets even when no value
//! follows, a recheck of every stream: policy reload, pod gone; the caller's
//! token expiring) the stream asks its `Authorize` again, before any event; a
//! refusal ends it.
//!
//! A stream is one struct polled by hand, not a chain of combinators: with
//! 10,000 of them open, each byte of a stream is 10 KB of the agent.
//!
//! Each stream measures propagation itself: when it hands over the events of
//! a state the cache stamped with the instant its change was seen, it observes
//! the delay, once per state. That costs each subscriber a clock read and a
//! histogram observation per change (no shared bookkeeping of who has had what);
//! the histogram's tail is the delay to the last subscriber.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use futures::{Stream, StreamExt};
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::watch;
use tokio::time::Sleep;
use tokio_stream::wrappers::WatchStream;
use vaultlet_client::SecretRef;
use vaultlet_client::proto::EventKind;

use crate::cache::{Published, SecretState, Subscription};
use crate::policy::AccessStamp;
use crate::secret::{SecretId, SecretVersion, ViewMemo};

/// One reference of a watch request, resolved and subscribed.
pub struct Watched {
    pub index: u32,
    pub id: SecretId,
    pub reference: SecretRef,
    /// The revision the client already holds: its SNAPSHOT is skipped.
    pub known_revision: Option<String>,
    pub subscription: Subscription,
}

/// Whether the subscriber may go on receiving a secret, asked on every
/// wake-up of its stream. `allowed` is the reference's own memo of what its
/// last allowed answer rested on: an implementation may answer from it while
/// nothing it rests on changed. It is cleared before a recheck of every
/// reference (a policy reload, pods gone, the token's expiry).
pub trait Authorize: Send + Sync + 'static {
    fn authorize(&self, id: &SecretId, allowed: &mut Option<AccessStamp>) -> Result<(), Revoked>;
}

/// Why a stream ends: the caller may no longer read `index`'s secret
/// (`PERMISSION_DENIED`), or is no longer who it was (`UNAUTHENTICATED`).
#[derive(Debug, Clone)]
pub struct Revoked {
    pub index: u32,
    pub code: tonic::Code,
    /// For the caller: never says more than it may know.
    pub message: String,
    /// For the audit record: which rule refused.
    pub reason: String,
}

/// What a stream yields: events, then possibly one final revocation.
pub enum Item {
    Event(HubEvent),
    Revoked(Revoked),
}

/// Why a stream woke up.
enum Wake {
    /// A state of this reference's secret (a new one, or the same one again:
    /// a change was announced).
    State(usize, Arc<Published>),
    /// Something that may change every reference's answer.
    All,
}

/// An event for one reference; the values stay in the shared version until the
/// server encodes them. `Events::target` names the secret and reference.
pub struct HubEvent {
    pub kind: EventKind,
    pub index: u32,
    /// The reference's place in its stream.
    tracker: usize,
    /// The version the subscriber holds after this event (the last good one for
    /// ERROR; none for DELETED).
    pub version: Option<Arc<SecretVersion>>,
    pub error: Option<EventError>,
}

#[cfg(test)]
impl HubEvent {
    /// An event about the first reference of a stream.
    pub fn new(kind: EventKind, index: u32, version: Option<Arc<SecretVersion>>) -> HubEvent {
        HubEvent { kind, index, tracker: 0, version, error: None }
    }
}

pub struct EventError {
    pub code: tonic::Code,
    pub message: String,
    pub revision: String,
}

pin_project_lite::pin_project! {
    /// The events of a watch. Ends only after a revocation, or once every
    /// source of wake-ups has closed.
    pub struct Events {
        trackers: Vec<Tracker>,
        // Every reference is checked again when it changes.
        rechecks: Option<WatchStream<u64>>,
        // Whether `rechecks` changed, read without its lock (see `registered`).
        rechecks_seen: Option<watch::Receiver<u64>>,
        // The caller's token expiry: every reference is checked again.
        #[pin]
        until: Option<Sleep>,
        // The waker `rechecks` and `until` were last left pending with. Polled
        // again only when one may have fired or another task polls the stream:
        // a pending poll of a watch channel takes its lock, and every stream
        // shares the recheck channel, so a change fanned out to 10,000 streams
        // would otherwise queue them on it.
        registered: Option<Waker>,
        guard: Arc<dyn Authorize>,
        // The second item of a wake-up that had two (see `Out`).
        ready: VecDeque<Item>,
        revoked: bool,
        delays: Histogram,
        opened: Instant,
        // The stamp of the last state whose delay was observed: references to
        // one secret share its states, and are woken one after the other.
        measured: Option<Instant>,
    }
}

/// The events of `watched`, each reference checked with `guard` before any
/// event of it; a change of `rechecks` and `until` (the caller's token
/// expiry) make every reference checked again. Each change's delay until its
/// events are handed over is observed in `delays`.
pub fn events(
    watched: Vec<Watched>,
    guard: Arc<dyn Authorize>,
    rechecks: Option<watch::Receiver<u64>>,
    until: Option<Instant>,
    delays: Histogram,
) -> Events {
    let trackers = watched
        .into_iter()
        .enumerate()
        .map(|(i, w)| Tracker {
            slot: i,
            index: w.index,
            id: w.id,
            reference: w.reference,
            states: Some(w.subscription),
            allowed: None,
            sent: Sent::Nothing,
            known_revision: w.known_revision,
            failed_revision: None,
        })
        .collect();
    Events {
        trackers,
        rechecks_seen: rechecks.clone(),
        rechecks: rechecks.map(WatchStream::from_changes),
        until: until.map(|t| tokio::time::sleep_until(t.into())),
        registered: None,
        guard,
        ready: VecDeque::new(),
        revoked: false,
        delays,
        opened: Instant::now(),
        measured: None,
    }
}

impl Events {
    /// The secret and reference `event` is about.
    pub fn target(&self, event: &HubEvent) -> (&SecretId, &SecretRef) {
        let t = &self.trackers[event.tracker];
        (&t.id, &t.reference)
    }

    /// The watched references, in request order.
    pub fn references(&self) -> impl Iterator<Item = &SecretRef> {
        self.trackers.iter().map(|t| &t.reference)
    }
}

impl Stream for Events {
    type Item = Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let mut this = self.project();
        loop {
            if let Some(item) = this.ready.pop_front() {
                if this.ready.is_empty() {
                    // Events are rare; a stream keeps no buffer between them.
                    this.ready.shrink_to_fit();
                }
                return Poll::Ready(Some(item));
            }
            if *this.revoked {
                return Poll::Ready(None);
            }
            // Every source is polled before the stream waits, so each has
            // registered its wake-up.
            let mut open = false;
            let mut wake = None;
            let quiet = this.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
                && this.rechecks_seen.as_ref().is_none_or(|r| matches!(r.has_changed(), Ok(false)))
                // The expiry's timer is marked elapsed when it fires, and wakes
                // the stream. Before it fires, a wake-up that hands over an
                // event still asks `Authorize`, and the agent's reads the
                // caller's expiry against the clock: reading the clock here as
                // well cost about 200 instructions an event (callgrind).
                && this.until.as_ref().as_pin_ref().is_none_or(|u| !u.is_elapsed());
            if quiet {
                open = true;
            } else {
                *this.registered = None;
                if let Some(rechecks) = this.rechecks.as_mut() {
                    match rechecks.poll_next_unpin(cx) {
                        Poll::Ready(Some(_)) => {
                            if let Some(seen) = this.rechecks_seen.as_mut() {
                                seen.mark_unchanged();
                            }
                            wake = Some(Wake::All);
                        }
                        Poll::Ready(None) => (*this.rechecks, *this.rechecks_seen) = (None, None),
                        Poll::Pending => open = true,
                    }
                }
                if wake.is_none()
                    && let Some(until) = this.until.as_mut().as_pin_mut()
                {
                    match until.poll(cx) {
                        Poll::Ready(()) => {
                            this.until.set(None);
                            wake = Some(Wake::All);
                        }
                        Poll::Pending => open = true,
                    }
                }
                if wake.is_none() && open {
                    *this.registered = Some(cx.waker().clone());
                }
            }
            for (i, t) in this.trackers.iter_mut().enumerate() {
                if wake.is_some() {
                    break;
                }
                let Some(states) = t.states.as_mut() else { continue };
                match states.poll_state(cx) {
                    Poll::Ready(Some(published)) => wake = Some(Wake::State(i, published)),
                    Poll::Ready(None) => t.states = None,
                    Poll::Pending => open = true,
                }
            }
            match wake {
                Some(wake) => {
                    let mut s = Woken {
                        trackers: this.trackers,
                        guard: this.guard,
                        revoked: this.revoked,
                        out: Out { first: None, rest: this.ready },
                        delays: this.delays,
                        opened: *this.opened,
                        measured: this.measured,
                    };
                    s.on(wake);
                    if let Some(item) = s.out.first {
                        return Poll::Ready(Some(item));
                    }
                }
                None if open => return Poll::Pending,
                None => return Poll::Ready(None),
            }
        }
    }
}

/// The items of one wake-up: at most two (a version's event, then its
/// error). The first goes straight to the caller; only a second waits in the
/// stream's queue. (Queued, each event allocated the queue and freed it:
/// 275 of the 9,450 instructions an event cost the agent, callgrind.)
struct Out<'a> {
    first: Option<Item>,
    rest: &'a mut VecDeque<Item>,
}

impl Out<'_> {
    fn push(&mut self, item: Item) {
        if self.first.is_none() {
            self.first = Some(item);
        } else {
            self.rest.push_back(item);
        }
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }
}

/// A stream's state while it handles a wake-up.
struct Woken<'a> {
    trackers: &'a mut Vec<Tracker>,
    guard: &'a Arc<dyn Authorize>,
    revoked: &'a mut bool,
    out: Out<'a>,
    delays: &'a Histogram,
    opened: Instant,
    measured: &'a mut Option<Instant>,
}

impl Woken<'_> {
    fn on(&mut self, wake: Wake) {
        let checked = match &wake {
            Wake::State(i, _) => *i..*i + 1,
            Wake::All => 0..self.trackers.len(),
        };
        for i in checked {
            let t = &mut self.trackers[i];
            if matches!(wake, Wake::All) {
                t.allowed = None;
            }
            if let Err(mut revoked) = self.guard.authorize(&t.id, &mut t.allowed) {
                revoked.index = t.index;
                *self.revoked = true;
                self.out.push(Item::Revoked(revoked));
                return;
            }
        }
        if let Wake::State(i, published) = wake {
            let before = self.out.len();
            self.trackers[i].advance(&published.state, &mut self.out);
            if self.out.len() > before {
                self.measure(published.seen);
            }
        }
    }

    /// Observes the delay of a change whose events are being handed over:
    /// once per state, and only for a change seen while this stream was open
    /// (the snapshot of an older state propagates nothing).
    fn measure(&mut self, seen: Option<Instant>) {
        let Some(seen) = seen.filter(|s| *s >= self.opened && Some(*s) != *self.measured) else { return };
        *self.measured = Some(seen);
        self.delays.observe(seen.elapsed().as_secs_f64());
    }
}

/// What the subscriber holds for one reference.
enum Sent {
    Nothing,
    Deleted,
    /// A version, and the key version of what the reference sees of it.
    Version(Arc<SecretVersion>, u32),
}

struct Tracker {
    /// Its place in `Events::trackers`.
    slot: usize,
    index: u32,
    id: SecretId,
    reference: SecretRef,
    /// None once the cache closed the channel.
    states: Option<Subscription>,
    /// What its last allowed access check rested on (see `Authorize`).
    allowed: Option<AccessStamp>,
    sent: Sent,
    known_revision: Option<String>,
    /// The failing revision last reported, so an error is reported once.
    failed_revision: Option<String>,
}

impl Tracker {
    fn event(&self, kind: EventKind, version: Option<Arc<SecretVersion>>, error: Option<EventError>) -> Item {
        Item::Event(HubEvent { kind, index: self.index, tracker: self.slot, version, error })
    }

    fn held(&self) -> Option<Arc<SecretVersion>> {
        match &self.sent {
            Sent::Version(v, _) => Some(v.clone()),
            _ => None,
        }
    }

    /// Queues the events that take the subscriber from what it holds to `state`.
    fn advance(&mut self, state: &SecretState, out: &mut Out<'_>) {
        match state {
            SecretState::Absent => {
                if !matches!(self.sent, Sent::Deleted) {
                    self.sent = Sent::Deleted;
                    self.failed_revision = None;
                    out.push(self.event(EventKind::Deleted, None, None));
                }
            }
            SecretState::Ready { version, error } => {
                // The same state again (a change announced, not yet loaded): nothing new.
                if matches!(&self.sent, Sent::Version(held, _) if Arc::ptr_eq(held, version)) && error.is_none() {
                    self.failed_revision = None;
                    return;
                }
                let view = version.view(&self.id, &self.reference);
                let key_version = match &view.key_version {
                    Ok(k) => *k,
                    Err(e) => {
                        // This version lacks what the reference asks for (a data key, a
                        // field): report it once; the subscriber keeps what it holds.
                        if self.failed_revision.as_deref() != Some(version.revision.as_str()) {
                            self.failed_revision = Some(version.revision.clone());
                            let error = EventError {
                                code: e.code(),
                                message: e.to_string(),
                                revision: version.revision.clone(),
                            };
                            out.push(self.event(EventKind::Error, self.held(), Some(error)));
                        }
                        return;
                    }
                };
                if let Some(kind) = self.values_event(version, &view, key_version) {
                    out.push(self.event(kind, Some(version.clone()), None));
                }
                self.sent = Sent::Version(version.clone(), key_version);
                match error {
                    Some(e) => self.push_error(out, e, Some(version.clone())),
                    None => self.failed_revision = None,
                }
            }
            SecretState::Failed(e) => {
                self.sent = Sent::Nothing;
                self.push_error(out, e, None)
            }
        }
    }

    /// Which event, if any, a new good version means for this subscriber.
    fn values_event(&mut self, version: &Arc<SecretVersion>, view: &ViewMemo, key_version: u32) -> Option<EventKind> {
        match &self.sent {
            Sent::Nothing => {
                let known = self.known_revision.take();
                (known.as_deref() != Some(version.revision.as_str())).then_some(EventKind::Snapshot)
            }
            Sent::Deleted => Some(EventKind::ContentChanged),
            Sent::Version(old, _) if Arc::ptr_eq(old, version) || old.revision == version.revision => None,
            Sent::Version(old, _) if !version.same_view_as(view, old, &self.id, &self.reference) => {
                Some(EventKind::ContentChanged)
            }
            Sent::Version(_, old_key) if *old_key != key_version => Some(EventKind::Recrypted),
            // Nothing this reference sees changed (another data key, metadata).
            Sent::Version(..) => None,
        }
    }

    fn push_error(&mut self, out: &mut Out<'_>, e: &crate::cache::VersionError, last_good: Option<Arc<SecretVersion>>) {
        if self.failed_revision.as_deref() != Some(e.revision.as_str()) {
            self.failed_revision = Some(e.revision.clone());
            let error = EventError {
                code: tonic::Code::FailedPrecondition,
                message: e.message.clone(),
                revision: e.revision.clone(),
            };
            out.push(self.event(EventKind::Error, last_good, Some(error)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use futures::stream::BoxStream;

    use super::*;
    use crate::cache::VersionError;
    use crate::secret::tests::version;
    use crate::states::Publisher;

    /// `state` as the cache publishes a first load.
    fn published(state: SecretState) -> Arc<Published> {
        Arc::new(Published { state, seen: None })
    }

    fn ready(v: SecretVersion) -> Arc<Published> {
        published(SecretState::Ready { version: Arc::new(v), error: None })
    }

    /// A histogram nobody reads.
    fn delays() -> Histogram {
        Histogram::new([1.0])
    }

    fn watched(index: u32, r: &str, known: Option<&str>, subscription: Subscription) -> Watched {
        let reference: SecretRef = r.parse().unwrap();
        let id = SecretId::new("default", reference.name.clone());
        Watched { index, id, reference, known_revision: known.map(Into::into), subscription }
    }

    /// Allows what its switch says, per secret name.
    #[derive(Default)]
    struct Switch(std::sync::Mutex<std::collections::HashSet<String>>);

    impl Switch {
        fn deny(&self, name: &str) {
            self.0.lock().unwrap().insert(name.into());
        }
    }

    impl Authorize for Switch {
        fn authorize(&self, id: &SecretId, _: &mut Option<AccessStamp>) -> Result<(), Revoked> {
            if self.0.lock().unwrap().contains(&id.name) {
                let message = format!("may not read {id}");
                return Err(Revoked {
                    index: 0,
                    code: tonic::Code::PermissionDenied,
                    reason: message.clone(),
                    message,
                });
            }
            Ok(())
        }
    }

    fn events(watched: Vec<Watched>) -> BoxStream<'static, Item> {
        super::events(watched, Arc::new(Switch::default()), None, None, delays()).boxed()
    }

    async fn next_item(s: &mut BoxStream<'static, Item>) -> Item {
        tokio::time::timeout(Duration::from_secs(2), s.next()).await.expect("event in time").expect("open stream")
    }

    async fn next(s: &mut BoxStream<'static, Item>) -> HubEvent {
        match next_item(s).await {
            Item::Event(e) => e,
            Item::Revoked(r) => panic!("revoked: {r:?}"),
        }
    }

    async fn quiet(s: &mut BoxStream<'static, Item>) {
        assert!(tokio::time::timeout(Duration::from_millis(50), s.next()).await.is_err(), "expected no event");
    }

    #[tokio::test]
    async fn snapshot_then_recrypted_then_content_changed_then_deleted() {
        let v1 = version("1", &[("k", 1, r#"{"a":"1"}"#)]);
        let tx = Publisher::new(ready(v1));
        let mut s = events(vec![watched(0, "app", None, tx.subscribe(0))]);
        assert_eq!(next(&mut s).await.kind, EventKind::Snapshot);

        let current = tx.borrow().clone();
        let SecretState::Ready { version: old, .. } = &current.state else { panic!() };
        let v2 = version("2", &[("k", 2, r#"{"a":"1"}"#)]).share_unchanged(old);
        tx.publish(ready(v2));
        let e = next(&mut s).await;
        assert_eq!(e.kind, EventKind::Recrypted);
        assert_eq!(e.version.unwrap().documents["k"].key_version, 2);

        tx.publish(ready(version("3", &[("k", 2, r#"{"a":"2"}"#)])));
        assert_eq!(next(&mut s).await.kind, EventKind::ContentChanged);

        tx.publish(published(SecretState::Absent));
        assert_eq!(next(&mut s).await.kind, EventKind::Deleted);
        tx.publish(published(SecretState::Absent));
        quiet(&mut s).await;

        tx.publish(ready(version("4", &[("k", 1, r#"{"a":"4"}"#)])));
        assert_eq!(next(&mut s).await.kind, EventKind::ContentChanged);
    }

    #[tokio::test]
    async fn known_revision_skips_the_snapshot() {
        let tx = Publisher::new(ready(version("7", &[("k", 1, "{}")])));
        let mut s = events(vec![watched(3, "app", Some("7"), tx.subscribe(0))]);
        quiet(&mut s).await;
        tx.publish(ready(version("8", &[("k", 1, r#"{"a":"1"}"#)])));
        let e = next(&mut s).await;
        assert_eq!((e.kind, e.index), (EventKind::ContentChanged, 3));
    }

    #[tokio::test]
    async fn errors_are_reported_once_with_the_last_good_version() {
        let good = Arc::new(version("1", &[("k", 1, r#"{"a":"1"}"#)]));
        let failing = |rev: &str| Some(Arc::new(VersionError { revision: rev.into(), message: "bad".into() }));
        let tx = Publisher::new(published(SecretState::Ready { version: good.clone(), error: failing("2") }));
        let mut s = events(vec![watched(0, "app", None, tx.subscribe(0))]);
        assert_eq!(next(&mut s).await.kind, EventKind::Snapshot);
        let e = next(&mut s).await;
        assert_eq!(e.kind, EventKind::Error);
        assert_eq!(e.version.unwrap().revision, "1");
        assert_eq!(e.error.unwrap().revision, "2");
        tx.publish(published(SecretState::Ready { version: good.clone(), error: failing("2") }));
        quiet(&mut s).await;
        tx.publish(published(SecretState::Ready { version: good, error: failing("3") }));
        assert_eq!(next(&mut s).await.kind, EventKind::Error);
    }

    #[tokio::test]
    async fn a_slow_subscriber_gets_the_latest_state_and_does_not_hold_up_others() {
        let tx = Publisher::new(ready(version("0", &[("k", 1, r#"{"n":"0"}"#)])));
        let mut fast = events(vec![watched(0, "app", None, tx.subscribe(0))]);
        let mut slow = events(vec![watched(0, "app", None, tx.subscribe(0))]);
        assert_eq!(next(&mut fast).await.kind, EventKind::Snapshot);
        assert_eq!(next(&mut slow).await.kind, EventKind::Snapshot);
        for n in 1..=1000 {
            tx.publish(ready(version(&n.to_string(), &[("k", 1, &format!(r#"{{"n":"{n}"}}"#))])));
            // The fast one keeps up with every change while the slow one reads nothing.
            let e = next(&mut fast).await;
            assert_eq!(e.version.unwrap().revision, n.to_string());
        }
        let e = next(&mut slow).await;
        assert_eq!((e.kind, e.version.unwrap().revision.as_str()), (EventKind::ContentChanged, "1000"));
        quiet(&mut slow).await;
    }

    #[tokio::test]
    async fn one_change_reaches_many_subscribers() {
        let tx = Publisher::new(ready(version("0", &[("k", 1, r#"{"n":"0"}"#)])));
        let mut subs: Vec<_> = (0..500).map(|_| events(vec![watched(0, "app", None, tx.subscribe(0))])).collect();
        for s in &mut subs {
            assert_eq!(next(s).await.kind, EventKind::Snapshot);
        }
        tx.publish(ready(version("1", &[("k", 2, r#"{"n":"1"}"#)])));
        for s in &mut subs {
            let e = next(s).await;
            assert_eq!((e.kind, e.version.unwrap().revision.as_str()), (EventKind::ContentChanged, "1"));
        }
    }

    #[tokio::test]
    async fn each_stream_measures_a_change_once_and_a_snapshot_never() {
        let tx = Publisher::new(ready(version("1", &[("k", 1, r#"{"a":"1"}"#)])));
        let delays = Histogram::new([1.0]);
        let follow = |tx: &Publisher| {
            // Two references to one secret: its states reach the stream twice.
            let refs = vec![watched(0, "app", None, tx.subscribe(0)), watched(1, "app", None, tx.subscribe(0))];
            super::events(refs, Arc::new(Switch::default()), None, None, delays.clone()).boxed()
        };
        let mut s = follow(&tx);
        for _ in 0..2 {
            assert_eq!(next(&mut s).await.kind, EventKind::Snapshot);
        }
        assert_eq!(delays.count(), 0, "a first load is no change");

        let seen = Instant::now();
        let changed = SecretState::Ready { version: Arc::new(version("2", &[("k", 1, r#"{"a":"2"}"#)])), error: None };
        tx.publish(Arc::new(Published { state: changed, seen: Some(seen) }));
        for _ in 0..2 {
            assert_eq!(next(&mut s).await.kind, EventKind::ContentChanged);
        }
        assert_eq!(delays.count(), 1, "once per state, however many references");
        assert!(delays.sum() <= seen.elapsed().as_secs_f64(), "measured from the stamp");

        let mut late = follow(&tx);
        for _ in 0..2 {
            assert_eq!(next(&mut late).await.kind, EventKind::Snapshot);
        }
        assert_eq!(delays.count(), 1, "the snapshot of a change seen before the stream opened");
    }

    #[tokio::test]
    async fn a_revoked_reference_ends_the_stream_before_its_new_value() {
        let tx = Publisher::new(ready(version("1", &[("k", 1, r#"{"a":"old"}"#)])));
        let guard = Arc::new(Switch::default());
        let mut s =
            super::events(vec![watched(7, "app", None, tx.subscribe(0))], guard.clone(), None, None, delays()).boxed();
        assert_eq!(next(&mut s).await.kind, EventKind::Snapshot);
        // The grant goes with the same change that brings new values.
        guard.deny("app");
        tx.publish(ready(version("2", &[("k", 1, r#"{"a":"new"}"#)])));
        match next_item(&mut s).await {
            Item::Revoked(r) => assert_eq!((r.index, r.code), (7, tonic::Code::PermissionDenied)),
            Item::Event(e) => panic!("a {:?} event reached a revoked subscriber", e.kind),
        }
        assert!(s.next().await.is_none(), "the stream ends after the revocation");
    }

    #[tokio::test]
    async fn a_change_without_new_values_or_a_global_wake_checks_again() {
        let tx = Publisher::new(ready(version("1", &[("k", 1, r#"{"a":"1"}"#)])));
        let guard = Arc::new(Switch::default());
        let mut s =
            super::events(vec![watched(0, "app", None, tx.subscribe(0))], guard.clone(), None, None, delays()).boxed();
        assert_eq!(next(&mut s).await.kind, EventKind::Snapshot);
        // A change announced: the same state, marked changed.
        tx.announce();
        quiet(&mut s).await;
        guard.deny("app");
        tx.announce();
        assert!(matches!(next_item(&mut s).await, Item::Revoked(_)), "an annotation edit alone revokes");

        let (reloads, guard) = (watch::Sender::new(0), Arc::new(Switch::default()));
        let mut s = rechecked(&tx, "other", &guard, &reloads);
        assert_eq!(next(&mut s).await.kind, EventKind::Snapshot);
        guard.deny("other");
        reloads.send_modify(|n| *n += 1);
        assert!(matches!(next_item(&mut s).await, Item::Revoked(_)), "a policy reload revokes");
    }

    /// Allows everything, answering from a reference's memo while the stamp
    /// holds; counts the checks it had to make.
    #[derive(Default)]
    struct Memo {
        stamp: std::sync::atomic::AtomicU64,
        checks: std::sync::atomic::AtomicUsize,
    }

    impl Authorize for Memo {
        fn authorize(&self, _: &SecretId, allowed: &mut Option<AccessStamp>) -> Result<(), Revoked> {
            let stamp = Some(AccessStamp::of_source(self.stamp.load(Ordering::SeqCst)));
            if *allowed != stamp {
                self.checks.fetch_add(1, Ordering::SeqCst);
                *allowed = stamp;
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_reference_is_checked_again_once_its_stamp_moves_and_at_every_recheck() {
        let doc = |n: &str| version(n, &[("k", 1, &format!(r#"{{"a":"{n}"}}"#))]);
        let tx = Publisher::new(ready(doc("1")));
        let (reloads, memo) = (watch::Sender::new(0), Arc::new(Memo::default()));
        let refs = vec![watched(0, "app", None, tx.subscribe(0))];
        let mut s = super::events(refs, memo.clone(), Some(reloads.subscribe()), None, delays()).boxed();
        let checks = || memo.checks.load(Ordering::SeqCst);
        assert_eq!(next(&mut s).await.kind, EventKind::Snapshot);
        assert_eq!(checks(), 1);
        tx.publish(ready(doc("2")));
        assert_eq!(next(&mut s).await.kind, EventKind::ContentChanged);
        assert_eq!(checks(), 1, "the same stamp: answered from the memo");
        memo.stamp.fetch_add(1, Ordering::SeqCst);
        tx.publish(ready(doc("3")));
        assert_eq!(next(&mut s).await.kind, EventKind::ContentChanged);
        assert_eq!(checks(), 2, "the stamp moved: checked again");
        reloads.send_modify(|n| *n += 1);
        quiet(&mut s).await;
        assert_eq!(checks(), 3, "a recheck of every reference asks again, the stamp unchanged");
    }

    /// The events of `name` checked by `guard`, and again at each change of `reloads`.
    fn rechecked(
        tx: &Publisher,
        name: &str,
        guard: &Arc<Switch>,
        reloads: &watch::Sender<u64>,
    ) -> BoxStream<'static, Item> {
        let refs = vec![watched(0, name, None, tx.subscribe(0))];
        super::events(refs, guard.clone(), Some(reloads.subscribe()), None, delays()).boxed()
    }

    #[tokio::test]
    async fn a_recheck_after_events_still_revokes() {
        let tx = Publisher::new(ready(version("1", &[("k", 1, r#"{"a":"1"}"#)])));
        let (reloads, guard) = (watch::Sender::new(0), Arc::new(Switch::default()));
        let mut s = rechecked(&tx, "app", &guard, &reloads);
        assert_eq!(next(&mut s).await.kind, EventKind::Snapshot);
        // Woken by its state: the recheck channel is left as it was registered.
        tx.publish(ready(version("2", &[("k", 1, r#"{"a":"2"}"#)])));
        assert_eq!(next(&mut s).await.kind, EventKind::ContentChanged);
        quiet(&mut s).await;
        guard.deny("app");
        reloads.send_modify(|n| *n += 1);
        assert!(matches!(next_item(&mut s).await, Item::Revoked(_)), "a policy reload revokes");
    }

    #[tokio::test]
    async fn a_stream_polled_by_another_task_registers_again() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Count(AtomicUsize);
        impl futures::task::ArcWake for Count {
            fn wake_by_ref(me: &Arc<Self>) {
                me.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let tx = Publisher::new(ready(version("1", &[("k", 1, r#"{"a":"1"}"#)])));
        let reloads = watch::Sender::new(0);
        let mut s = super::events(
            vec![watched(0, "app", None, tx.subscribe(0))],
            Arc::new(Switch::default()),
            Some(reloads.subscribe()),
            None,
            delays(),
        )
        .boxed();
        assert_eq!(next(&mut s).await.kind, EventKind::Snapshot);
        let (first, second) = (Arc::new(Count(AtomicUsize::new(0))), Arc::new(Count(AtomicUsize::new(0))));
        for count in [&first, &second] {
            let waker = futures::task::waker(count.clone());
            assert!(s.poll_next_unpin(&mut Context::from_waker(&waker)).is_pending());
        }
        reloads.send_modify(|n| *n += 1);
        assert!(second.0.load(Ordering::SeqCst) > 0, "the task polling it now is woken");
    }

    #[tokio::test(start_paused = true)]
    async fn the_callers_expiry_wakes_the_stream_to_be_checked() {
        let tx = Publisher::new(ready(version("1", &[("k", 1, r#"{"a":"1"}"#)])));
        let guard = Arc::new(Switch::default());
        let until = Instant::now() + Duration::from_secs(600);
        let mut s =
            super::events(vec![watched(0, "app", None, tx.subscribe(0))], guard.clone(), None, Some(until), delays())
                .boxed();
        assert_eq!(next(&mut s).await.kind, EventKind::Snapshot);
        // What the guard says at expiry decides (the real one sees the expired token).
        guard.deny("app");
        let item = tokio::time::timeout(Duration::from_secs(700), s.next()).await.unwrap().unwrap();
        assert!(matches!(item, Item::Revoked(_)));
    }

    #[tokio::test]
    async fn a_missing_field_is_an_error_for_that_reference_only() {
        let tx = Publisher::new(ready(version("1", &[("k", 1, r#"{"a":"1","b":"2"}"#)])));
        let mut r = watched(0, "app", None, tx.subscribe(0));
        r.reference.fields = vec!["b".into()];
        let mut s = events(vec![r, watched(1, "app", None, tx.subscribe(0))]);
        let mut kinds = [next(&mut s).await, next(&mut s).await];
        kinds.sort_by_key(|e| e.index);
        assert_eq!(kinds.iter().map(|e| e.kind).collect::<Vec<_>>(), [EventKind::Snapshot, EventKind::Snapshot]);
        tx.publish(ready(version("2", &[("k", 1, r#"{"a":"1"}"#)])));
        let mut got = [next(&mut s).await, next(&mut s).await];
        got.sort_by_key(|e| e.index);
        assert_eq!(got[0].kind, EventKind::Error);
        assert_eq!(got[0].error.as_ref().unwrap().code, tonic::Code::NotFound);
        assert_eq!(got[0].version.as_ref().unwrap().revision, "1", "the last good values stay with the error");
        assert_eq!(got[1].kind, EventKind::ContentChanged);
    }
}
