//! Bounds on what callers may hold open or ask for, so that no caller, however
//! hostile, can exhaust the agent for the others: connections in all, and per
//! peer its connections, watch streams, calls in progress and call rate. A
//! peer is a pod, or, outside pods, the processes of one user.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub connections: usize,
    pub connections_per_peer: usize,
    pub streams_per_peer: usize,
    /// Calls of one peer whose answer has not started yet (a call waiting for
    /// its request body, a TokenReview or Transit counts; an open watch does not).
    pub pending_per_peer: usize,
    /// Calls per second one peer may start (0: no limit), after a burst of
    /// `call_burst_per_peer`.
    pub calls_per_second_per_peer: u32,
    pub call_burst_per_peer: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 4096,
            connections_per_peer: 32,
            streams_per_peer: 1024,
            pending_per_peer: 256,
            // A busy service reading its secrets on every request stays well below.
            calls_per_second_per_peer: 2000,
            call_burst_per_peer: 4000,
        }
    }
}

/// Whose limits a connection counts against: one type for every per-peer
/// limit (connections, streams, calls, reviews).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PeerKey {
    /// A pod, by UID.
    Pod(String),
    /// Outside pods: the processes of one user.
    User(u32),
    Unidentified,
}

impl std::fmt::Display for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerKey::Pod(uid) => write!(f, "pod {uid}"),
            PeerKey::User(uid) => write!(f, "uid {uid} (outside pods)"),
            PeerKey::Unidentified => f.write_str("an unidentified process"),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Refused {
    #[error("the agent holds its limit of {0} connections")]
    Connections(usize),
    #[error("{peer} holds its limit of {limit} connections to the agent")]
    PeerConnections { peer: PeerKey, limit: usize },
    #[error("{peer} holds its limit of {limit} open watch streams; close some, or watch several secrets in one stream")]
    PeerStreams { peer: PeerKey, limit: usize },
    #[error("{peer} has {limit} calls waiting for an answer already; wait for them")]
    PeerPending { peer: PeerKey, limit: usize },
    #[error("{peer} calls more than {limit} times a second; slow down (read once and watch for changes)")]
    PeerRate { peer: PeerKey, limit: u32 },
}

#[derive(Default)]
struct Held {
    connections: usize,
    streams: usize,
    pending: usize,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.connections == 0 && self.streams == 0 && self.pending == 0
    }
}

pub struct Admission {
    limits: Limits,
    state: Mutex<(usize, HashMap<PeerKey, Held>)>,
    calls: Option<RateLimiter>,
    last_warning: AtomicU64,
}

#[derive(Clone, Copy)]
enum Kind {
    Connection,
    Stream,
    Pending,
}

/// A held connection, stream or pending call; released when dropped.
pub struct Slot {
    admission: Arc<Admission>,
    peer: PeerKey,
    kind: Kind,
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Admission> {
        let calls = (limits.calls_per_second_per_peer > 0)
            .then(|| RateLimiter::new(limits.call_burst_per_peer.max(1), limits.calls_per_second_per_peer));
        Arc::new(Admission { limits, state: Mutex::default(), calls, last_warning: AtomicU64::new(0) })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn connection(self: &Arc<Self>, peer: &PeerKey) -> Result<Slot, Refused> {
        let mut state = self.state.lock().expect("admission lock");
        let (total, peers) = &mut *state;
        if *total >= self.limits.connections {
            return Err(Refused::Connections(self.limits.connections));
        }
        let held = peers.entry(peer.clone()).or_default();
        if held.connections >= self.limits.connections_per_peer {
            return Err(Refused::PeerConnections { peer: peer.clone(), limit: self.limits.connections_per_peer });
        }
        held.connections += 1;
        *total += 1;
        Ok(Slot { admission: self.clone(), peer: peer.clone(), kind: Kind::Connection })
    }

    pub fn stream(self: &Arc<Self>, peer: &PeerKey) -> Result<Slot, Refused> {
        self.hold(peer, Kind::Stream, self.limits.streams_per_peer, |peer, limit| Refused::PeerStreams { peer, limit })
    }

    /// A call starts: within the peer's rate, and its number of calls waiting.
    pub fn call(self: &Arc<Self>, peer: &PeerKey) -> Result<Slot, Refused> {
        if let Some(rate) = &self.calls
            && !rate.allow(peer)
        {
            return Err(Refused::PeerRate { peer: peer.clone(), limit: self.limits.calls_per_second_per_peer });
        }
        self.hold(peer, Kind::Pending, self.limits.pending_per_peer, |peer, limit| Refused::PeerPending { peer, limit })
    }

    fn hold(
        self: &Arc<Self>,
        peer: &PeerKey,
        kind: Kind,
        limit: usize,
        refused: impl FnOnce(PeerKey, usize) -> Refused,
    ) -> Result<Slot, Refused> {
        let mut state = self.state.lock().expect("admission lock");
        let held = state.1.entry(peer.clone()).or_default();
        let count = match kind {
            Kind::Stream => &mut held.streams,
            Kind::Pending => &mut held.pending,
            Kind::Connection => &mut held.connections,
        };
        if *count >= limit {
            return Err(refused(peer.clone(), limit));
        }
        *count += 1;
        Ok(Slot { admission: self.clone(), peer: peer.clone(), kind })
    }

    /// True at most once every ten seconds: a flood of refusals logs one line.
    pub fn should_warn(&self) -> bool {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let last = self.last_warning.load(Ordering::Relaxed);
        now >= last + 10 && self.last_warning.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    fn release(&self, peer: &PeerKey, kind: Kind) {
        let mut state = self.state.lock().expect("admission lock");
        let (total, peers) = &mut *state;
        if let Some(held) = peers.get_mut(peer) {
            match kind {
                Kind::Connection => {
                    held.connections -= 1;
                    *total -= 1;
                }
                Kind::Stream => held.streams -= 1,
                Kind::Pending => held.pending -= 1,
            }
            if held.is_empty() {
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

/// Token buckets per peer: how many TokenReviews (cache misses) a peer may
/// cause, or how many calls it may start. A flood from one pod cannot become
/// a flood of reviews, nor starve the other pods.
pub struct RateLimiter {
    burst: f64,
    per_second: f64,
    buckets: Mutex<HashMap<PeerKey, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(burst: u32, per_second: u32) -> RateLimiter {
        RateLimiter { burst: f64::from(burst), per_second: f64::from(per_second), buckets: Mutex::default() }
    }

    pub fn allow(&self, key: &PeerKey) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("limiter lock");
        if buckets.len() > 4096 {
            // Forget peers whose buckets are full again: they owe nothing.
            let (burst, rate) = (self.burst, self.per_second);
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < burst);
        }
        // Looked up before inserting: the common case allocates nothing.
        let (tokens, at) = match buckets.get_mut(key) {
            Some(bucket) => bucket,
            None => buckets.entry(key.clone()).or_insert((self.burst, now)),
        };
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> PeerKey {
        PeerKey::Pod(name.into())
    }

    #[test]
    fn limits_hold_per_peer_and_in_all_and_free_on_drop() {
        let a = Admission::new(Limits {
            connections: 3,
            connections_per_peer: 2,
            streams_per_peer: 1,
            pending_per_peer: 1,
            calls_per_second_per_peer: 0,
            call_burst_per_peer: 0,
        });
        let c1 = a.connection(&pod("a")).unwrap();
        let _c2 = a.connection(&pod("a")).unwrap();
        assert!(matches!(a.connection(&pod("a")), Err(Refused::PeerConnections { .. })));
        let _c3 = a.connection(&pod("b")).unwrap();
        assert!(matches!(a.connection(&pod("c")), Err(Refused::Connections(3))));
        drop(c1);
        assert!(a.connection(&pod("a")).is_ok(), "a closed connection frees its slot");

        let s = a.stream(&pod("a")).unwrap();
        assert!(matches!(a.stream(&pod("a")), Err(Refused::PeerStreams { .. })));
        assert!(a.stream(&pod("b")).is_ok());
        drop(s);
        assert!(a.stream(&pod("a")).is_ok());

        let p = a.call(&pod("a")).unwrap();
        assert!(matches!(a.call(&pod("a")), Err(Refused::PeerPending { .. })));
        drop(p);
        assert!(a.call(&pod("a")).is_ok(), "calls unlimited in rate here");
        assert!(a.state.lock().unwrap().1.len() <= 3);
    }

    #[test]
    fn the_call_rate_is_per_peer() {
        let a = Admission::new(Limits { calls_per_second_per_peer: 1, call_burst_per_peer: 3, ..Limits::default() });
        assert!((0..3).all(|_| a.call(&pod("a")).is_ok()));
        let e = a.call(&pod("a")).err().unwrap();
        assert!(matches!(e, Refused::PeerRate { limit: 1, .. }), "{e}");
        assert!(a.call(&pod("b")).is_ok(), "another pod is not slowed");
    }

    #[test]
    fn the_limiter_allows_a_burst_then_refuses() {
        let l = RateLimiter::new(3, 1);
        assert!((0..3).all(|_| l.allow(&pod("a"))));
        assert!(!l.allow(&pod("a")));
        assert!(l.allow(&pod("b")), "buckets are per peer");
    }
}
