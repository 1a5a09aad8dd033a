//! Whether a change is being fanned out to many watch streams. While it is,
//! their connections wait a few turns before writing, so that one write
//! carries many streams' events (`server::coalesce`); single calls, the rest
//! of the time, write at once. Only a hint: a connection that misses it writes
//! sooner, in more pieces.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long after a fan-out began its events may still be on their way: 10,000
/// streams took about 100 ms on 2 cores (`vaultlet-bench --only streams`).
const WINDOW: Duration = Duration::from_millis(250);

pub struct FanOut {
    start: Instant,
    /// When the last fan-out began, in nanoseconds since `start` (0: never).
    last: AtomicU64,
}

impl Default for FanOut {
    fn default() -> FanOut {
        FanOut { start: Instant::now(), last: AtomicU64::new(0) }
    }
}

impl FanOut {
    /// A new state is about to reach `subscribers` streams.
    pub fn begins(&self, subscribers: usize) {
        if subscribers > 1 {
            self.last.store(self.now_ns(), Ordering::Relaxed);
        }
    }

    pub fn in_progress(&self) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        last != 0 && self.now_ns().saturating_sub(last) < WINDOW.as_nanos() as u64
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos().max(1) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fan_out_is_to_several_streams_and_ends() {
        let f = FanOut::default();
        assert!(!f.in_progress());
        f.begins(1);
        assert!(!f.in_progress(), "one subscriber is no fan-out");
        f.begins(10_000);
        assert!(f.in_progress());
        std::thread::sleep(WINDOW + Duration::from_millis(10));
        assert!(!f.in_progress());
    }
}
