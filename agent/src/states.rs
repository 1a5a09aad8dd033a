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
        Subscription { receiver, waiters: self.waiters.clone(), connection, place: None, registered: None }
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
    /// Its `seq` among the waiters, once it waited.
    place: Option<u64>,
    /// The waker it waits with: while the task polling it keeps it, a wait
    /// takes no lock.
    registered: Option<Waker>,
}

impl Subscription {
    /// The next state not yet taken (the latest, when several were sent), or
    /// `None` once the channel closed; otherwise the task is woken at the next.
    pub fn poll_state(&mut self, cx: &mut Context<'_>) -> Poll<Option<Arc<Published>>> {
        if let Some(taken) = self.take_changed() {
            return Poll::Ready(taken);
        }
        if self.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        if !self.waiters.wait(self.connection, cx.waker(), &mut self.place) {
            return Poll::Ready(self.take_new());
        }
        self.registered = Some(cx.waker().clone());
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
        if let Some(seq) = self.place {
            self.waiters.leave(self.connection, seq);
        }
    }
}

/// Subscribers waiting for changes, each from its first wait until it
/// leaves: a change wakes every one, connection by connection, and a
/// subscriber waits again without the lock (`Subscription::registered`).
/// (Registered anew after each change, each of 10,000 streams took this lock
/// once per change on either worker: 400 instructions an event, callgrind,
/// besides the lock's cache line moving between the cores.)
///
/// The list is sorted by (connection, seq) up to `sorted`; those who came
/// since follow in the order they came (`seq` grows) until the next change
/// sorts them in. So a place is found by binary search in either part.
#[derive(Default)]
struct Waiters {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    waiting: Vec<Waiting>,
    sorted: usize,
    /// Entries of `waiting` whose subscriber left.
    left: usize,
    next: u64,
    closed: bool,
}

struct Waiting {
    seq: u64,
    connection: u64,
    /// None once its subscriber left.
    waker: Option<Waker>,
}

impl Inner {
    fn find(&mut self, connection: u64, seq: u64) -> Option<&mut Waiting> {
        let (sorted, since) = self.waiting.split_at_mut(self.sorted);
        if let Ok(i) = sorted.binary_search_by_key(&(connection, seq), |w| (w.connection, w.seq)) {
            return Some(&mut sorted[i]);
        }
        let i = since.binary_search_by_key(&seq, |w| w.seq).ok()?;
        Some(&mut since[i])
    }
}

impl Waiters {
    /// Registers `waker` for every change from now on, or puts it in place of
    /// the one registered; false when no change will come.
    fn wait(&self, connection: u64, waker: &Waker, place: &mut Option<u64>) -> bool {
        let mut inner = self.inner.lock().expect("waiters lock");
        if inner.closed {
            return false;
        }
        if let Some(seq) = *place
            && let Some(Waiting { waker: Some(known), .. }) = inner.find(connection, seq)
        {
            known.clone_from(waker);
            return true;
        }
        let seq = inner.next;
        inner.next += 1;
        inner.waiting.push(Waiting { seq, connection, waker: Some(waker.clone()) });
        *place = Some(seq);
        true
    }

    fn leave(&self, connection: u64, seq: u64) {
        let mut inner = self.inner.lock().expect("waiters lock");
        if let Some(w) = inner.find(connection, seq) {
            w.waker = None;
            inner.left += 1;
        }
        // Subscribers that come and go do not pile up.
        if inner.left > inner.waiting.len() / 2 {
            let sorted = inner.waiting[..inner.sorted].iter().filter(|w| w.waker.is_some()).count();
            inner.waiting.retain(|w| w.waker.is_some());
            (inner.sorted, inner.left) = (sorted, 0);
        }
    }

    fn wake_all(&self) {
        let mut inner = self.inner.lock().expect("waiters lock");
        if inner.sorted < inner.waiting.len() {
            // Stable: each connection's waiters stay in the order they came.
            // It finds the runs they are already in (the sorted part, then
            // each connection's burst of newcomers). Its scratch space, as
            // large as the list, is freed at once (from about 4,000 waiters
            // up, a mapping of its own, returned to the system).
            inner.waiting.sort_by_key(|w| w.connection);
            inner.sorted = inner.waiting.len();
        }
        for waker in inner.waiting.iter().filter_map(|w| w.waker.as_ref()) {
            waker.wake_by_ref();
        }
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

    #[test]
    fn a_subscriber_keeps_its_place_across_changes_and_moves_to_a_new_waker() {
        let publisher = Publisher::new(absent());
        let (mut sub, first, waker) = waiting(&publisher);
        for n in 1..=3 {
            publisher.publish(absent());
            assert_eq!(first.wakes.load(Ordering::SeqCst), n);
            let mut cx = Context::from_waker(&waker);
            assert!(sub.poll_state(&mut cx).is_ready());
            assert!(sub.poll_state(&mut cx).is_pending());
            assert_eq!(publisher.waiters.inner.lock().unwrap().waiting.len(), 1);
        }
        // Polled by another task: the change wakes that one.
        let (second, other) = recorder(1, &Arc::default());
        assert!(sub.poll_state(&mut Context::from_waker(&other)).is_pending());
        publisher.publish(absent());
        assert_eq!((first.wakes.load(Ordering::SeqCst), second.wakes.load(Ordering::SeqCst)), (3, 1));
        assert_eq!(publisher.waiters.inner.lock().unwrap().waiting.len(), 1);
    }

    #[test]
    fn subscribers_leave_from_the_sorted_list_and_from_the_newcomers() {
        let publisher = Publisher::new(absent());
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut subs = Vec::new();
        let join = |name: u64, connection: u64, subs: &mut Vec<Subscription>| {
            let mut sub = publisher.subscribe(connection);
            let (_, waker) = recorder(name, &log);
            let mut cx = Context::from_waker(&waker);
            assert!(sub.poll_state(&mut cx).is_ready(), "the current state");
            assert!(sub.poll_state(&mut cx).is_pending());
            subs.push(sub);
        };
        for (name, connection) in [(0, 3), (1, 1), (2, 2), (3, 1)] {
            join(name, connection, &mut subs);
        }
        publisher.publish(absent());
        assert_eq!(std::mem::take(&mut *log.lock().unwrap()), [1, 3, 2, 0]);
        // Newcomers after the sort; one of the sorted and one of them leave.
        for (name, connection) in [(4, 2), (5, 1), (6, 3)] {
            join(name, connection, &mut subs);
        }
        drop(subs.remove(1)); // 1, sorted
        drop(subs.remove(4)); // 5, a newcomer
        publisher.publish(absent());
        assert_eq!(*log.lock().unwrap(), [3, 2, 4, 0, 6]);
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
