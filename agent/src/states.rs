//! A secret's state channel: the latest state for readers, and the wake-ups of
//! its subscribers, connection by connection.
//!
//! Readers and subscribers take states from a tokio `watch` channel, but
//! subscribers wait here rather than on it. tokio spreads a channel's waiters
//! over 8 lists chosen at random and wakes list after list, so a change reached
//! the 100 streams of one connection in 8 or more groups spread over the whole
//! fan-out, and after each change in more (each stream waits again in the
//! order it ran): each connection wrote many times, and each reading process
//! woke as often. Here a change wakes every waiter of one connection, then of
//! the next, so a connection's streams queue their frames together and one
//! write carries them (see `server::coalesce`). Measured with 10,000 streams
//! on 100 connections, 2 cores (`vaultlet-bench --only streams`): a change
//! took the agent 1,000-3,500 writes and the reading processes 1,000-2,000
//! context switches, now 180 and 150-200; its p99 went from 75-115 ms to
//! 44-62 ms.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::sync::watch;

use crate::cache::Published;

/// The sending side, kept by the cache: every send wakes the subscribers.
pub struct Publisher {
    tx: watch::Sender<Arc<Published>>,
    waiters: Arc<Waiters>,
}

impl Publisher {
    pub fn new(first: Arc<Published>) -> Publisher {
        Publisher { tx: watch::Sender::new(first), waiters: Arc::default() }
    }

    pub fn borrow(&self) -> watch::Ref<'_, Arc<Published>> {
        self.tx.borrow()
    }

    pub fn receiver_count(&self) -> usize {
        self.tx.receiver_count()
    }

    /// A subscriber on `connection` (any number that tells the agent's
    /// connections apart); its first state is the current one.
    pub fn subscribe(&self, connection: u64) -> Subscription {
        let mut receiver = self.tx.subscribe();
        receiver.mark_changed();
        Subscription { receiver, waiters: self.waiters.clone(), connection, place: None }
    }

    /// A new state.
    pub fn publish(&self, published: Arc<Published>) {
        self.tx.send_replace(published);
        self.waiters.wake_all();
    }

    /// The same state again: subscribers look at it anew (who may read the
    /// secret changed).
    pub fn announce(&self) {
        self.tx.send_modify(|_| {});
        self.waiters.wake_all();
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        // Closed before the wake-ups: a subscriber woken now must not wait
        // again on a channel nobody will send on.
        self.waiters.inner.lock().expect("waiters lock").closed = true;
        self.waiters.wake_all();
    }
}

/// What a subscriber follows of one secret.
pub struct Subscription {
    /// Readable directly; a subscriber that waits uses `poll_state`.
    pub receiver: watch::Receiver<Arc<Published>>,
    waiters: Arc<Waiters>,
    connection: u64,
    place: Place,
}

impl Subscription {
    /// The next state not yet taken (the latest, when several were sent), or
    /// `None` once the channel closed; otherwise the task is woken at the next.
    pub fn poll_state(&mut self, cx: &mut Context<'_>) -> Poll<Option<Arc<Published>>> {
        if let Some(taken) = self.take_changed() {
            return Poll::Ready(taken);
        }
        if !self.waiters.wait(self.connection, cx.waker(), &mut self.place) {
            return Poll::Ready(self.take_new());
        }
        // A state sent between the first look and the wait.
        self.take_changed().map_or(Poll::Pending, Poll::Ready)
    }

    /// What a poll returns if the channel changed or closed, looked at
    /// without its lock (most polls find nothing new).
    fn take_changed(&mut self) -> Option<Option<Arc<Published>>> {
        match self.receiver.has_changed() {
            Ok(false) => None,
            Ok(true) => self.take_new().map(Some),
            // Closed: a state not taken yet, then the end.
            Err(_) => Some(self.take_new()),
        }
    }

    fn take_new(&mut self) -> Option<Arc<Published>> {
        let state = self.receiver.borrow_and_update();
        state.has_changed().then(|| state.clone())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.waiters.leave(&self.place);
    }
}

/// Subscribers waiting for the next change, in the order they came (`seq`
/// grows), so that a place is found by binary search; sorted by connection
/// once per change, when woken.
#[derive(Default)]
struct Waiters {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    waiting: Vec<Waiting>,
    /// The list of the round before, empty, kept for the next: the agent's
    /// pages stay locked in memory, so a list grown anew at each change (while
    /// the last one is being woken) would stay resident as well.
    spare: Vec<Waiting>,
    /// Entries of `waiting` whose subscriber left.
    left: usize,
    /// Counts the wake-ups: a place from an earlier round is gone.
    round: u64,
    next: u64,
    closed: bool,
}

struct Waiting {
    seq: u64,
    connection: u64,
    /// None once its subscriber left.
    waker: Option<Waker>,
}

/// Where a subscriber waits: the round and its `seq` in it.
type Place = Option<(u64, u64)>;

impl Inner {
    fn find(&mut self, place: &Place) -> Option<&mut Waiting> {
        let (round, seq) = (*place)?;
        if round != self.round {
            return None;
        }
        let i = self.waiting.binary_search_by_key(&seq, |w| w.seq).ok()?;
        Some(&mut self.waiting[i])
    }
}

impl Waiters {
    /// Registers `waker` for the next wake-up, once per round; false when no
    /// wake-up will come.
    fn wait(&self, connection: u64, waker: &Waker, place: &mut Place) -> bool {
        let mut inner = self.inner.lock().expect("waiters lock");
        if inner.closed {
            return false;
        }
        if let Some(Waiting { waker: Some(known), .. }) = inner.find(place) {
            if !known.will_wake(waker) {
                known.clone_from(waker);
            }
            return true;
        }
        let seq = inner.next;
        inner.next += 1;
        inner.waiting.push(Waiting { seq, connection, waker: Some(waker.clone()) });
        *place = Some((inner.round, seq));
        true
    }

    fn leave(&self, place: &Place) {
        let mut inner = self.inner.lock().expect("waiters lock");
        if let Some(w) = inner.find(place) {
            w.waker = None;
            inner.left += 1;
        }
        // Subscribers that come and go between two changes do not pile up.
        if inner.left > inner.waiting.len() / 2 {
            inner.waiting.retain(|w| w.waker.is_some());
            inner.left = 0;
        }
    }

    fn wake_all(&self) {
        let mut waiting = {
            let mut inner = self.inner.lock().expect("waiters lock");
            inner.round += 1;
            inner.left = 0;
            // Room for as many as wait now, at once: grown by doubling, it
            // would overshoot and leave the smaller blocks behind.
            let mut spare = std::mem::take(&mut inner.spare);
            spare.reserve(inner.waiting.len());
            std::mem::replace(&mut inner.waiting, spare)
        };
        // Stable, so each connection's waiters stay in the order they came;
        // and it finds the runs they are already in: a fifth of the
        // instructions of an unstable sort by (connection, seq) (callgrind).
        // Its scratch space, as large as the list, is freed at once (from
        // about 4,000 waiters up, a mapping of its own, returned to the system).
        waiting.sort_by_key(|w| w.connection);
        for waker in waiting.drain(..).filter_map(|w| w.waker) {
            waker.wake();
        }
        self.inner.lock().expect("waiters lock").spare = waiting;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;
    use crate::cache::SecretState;

    fn absent() -> Arc<Published> {
        Arc::new(Published { state: SecretState::Absent, seen: None })
    }

    /// A waker that records the order it was woken in.
    struct Recorder {
        name: u64,
        log: Arc<Mutex<Vec<u64>>>,
        wakes: AtomicUsize,
    }

    impl Wake for Recorder {
        fn wake(self: Arc<Self>) {
            self.wakes.fetch_add(1, Ordering::SeqCst);
            self.log.lock().unwrap().push(self.name);
        }
    }

    fn recorder(name: u64, log: &Arc<Mutex<Vec<u64>>>) -> (Arc<Recorder>, Waker) {
        let r = Arc::new(Recorder { name, log: log.clone(), wakes: AtomicUsize::new(0) });
        (r.clone(), Waker::from(r))
    }

    #[test]
    fn the_first_state_is_the_current_one_then_each_new_one() {
        let publisher = Publisher::new(absent());
        let mut sub = publisher.subscribe(1);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(sub.poll_state(&mut cx), Poll::Ready(Some(_))));
        assert!(sub.poll_state(&mut cx).is_pending());
        let next = absent();
        publisher.publish(next.clone());
        assert!(matches!(sub.poll_state(&mut cx), Poll::Ready(Some(s)) if Arc::ptr_eq(&s, &next)));
        publisher.announce();
        assert!(matches!(sub.poll_state(&mut cx), Poll::Ready(Some(s)) if Arc::ptr_eq(&s, &next)));
        assert!(sub.poll_state(&mut cx).is_pending());
    }

    #[test]
    fn a_change_wakes_one_connection_after_the_other_each_waiter_once() {
        let publisher = Publisher::new(absent());
        let log = Arc::new(Mutex::new(Vec::new()));
        // Waiting in an order that mixes the connections, as streams do once
        // two workers ran them.
        let mut subs = Vec::new();
        for (name, connection) in [(0, 3), (1, 1), (2, 3), (3, 2), (4, 1), (5, 2)] {
            let mut sub = publisher.subscribe(connection);
            let (_, waker) = recorder(name, &log);
            let mut cx = Context::from_waker(&waker);
            assert!(sub.poll_state(&mut cx).is_ready(), "the current state");
            assert!(sub.poll_state(&mut cx).is_pending());
            // Polled again before the change: still one place.
            assert!(sub.poll_state(&mut cx).is_pending());
            subs.push(sub);
        }
        publisher.publish(absent());
        assert_eq!(*log.lock().unwrap(), [1, 4, 3, 5, 0, 2]);
    }

    /// A subscriber that took the current state and waits, and its waker's record.
    fn waiting(publisher: &Publisher) -> (Subscription, Arc<Recorder>, Waker) {
        let (woken, waker) = recorder(0, &Arc::default());
        let mut sub = publisher.subscribe(1);
        let mut cx = Context::from_waker(&waker);
        assert!(sub.poll_state(&mut cx).is_ready(), "the current state");
        assert!(sub.poll_state(&mut cx).is_pending());
        (sub, woken, waker)
    }

    #[test]
    fn a_subscriber_that_left_is_not_woken_and_holds_no_place() {
        let publisher = Publisher::new(absent());
        let (sub, woken, _waker) = waiting(&publisher);
        drop(sub);
        assert!(publisher.waiters.inner.lock().unwrap().waiting.is_empty());
        publisher.publish(absent());
        assert_eq!(woken.wakes.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn when_the_publisher_goes_waiters_wake_and_see_the_end() {
        let publisher = Publisher::new(absent());
        let (mut sub, woken, waker) = waiting(&publisher);
        let mut cx = Context::from_waker(&waker);
        drop(publisher);
        assert_eq!(woken.wakes.load(Ordering::SeqCst), 1);
        assert!(matches!(sub.poll_state(&mut cx), Poll::Ready(None)));
    }

    /// A state sent while a subscriber is between its look and its wait is
    /// not missed: the publisher and the subscriber race on two threads.
    #[test]
    fn no_state_is_missed_between_a_look_and_a_wait() {
        for _ in 0..200 {
            let publisher = Arc::new(Publisher::new(absent()));
            let mut sub = publisher.subscribe(1);
            let log = Arc::new(Mutex::new(Vec::new()));
            let (woken, waker) = recorder(0, &log);
            let mut cx = Context::from_waker(&waker);
            let _ = sub.poll_state(&mut cx);
            let sender = {
                let publisher = publisher.clone();
                std::thread::spawn(move || publisher.publish(absent()))
            };
            let got = sub.poll_state(&mut cx).is_ready();
            sender.join().unwrap();
            // Either this poll saw the state, or the wait it registered was woken.
            assert!(got || woken.wakes.load(Ordering::SeqCst) == 1);
        }
    }
}
