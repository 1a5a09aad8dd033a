//! Latency summaries.

use std::time::Duration;

use serde::Serialize;

/// Percentiles of a set of durations, in microseconds.
#[derive(Serialize, Clone, Debug)]
pub struct Summary {
    pub count: usize,
    pub min_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

pub fn summarize(samples: &mut [Duration]) -> Summary {
    samples.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Summary {
        count: samples.len(),
        min_us: us(samples.first().copied().unwrap_or_default()),
        p50_us: us(percentile(samples, 0.50)),
        p90_us: us(percentile(samples, 0.90)),
        p99_us: us(percentile(samples, 0.99)),
        max_us: us(samples.last().copied().unwrap_or_default()),
    }
}

/// The nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Rounds for a report: three significant digits are all a noisy machine gives.
pub fn round(x: f64) -> f64 {
    if x == 0.0 {
        return 0.0;
    }
    let digits = 3 - x.abs().log10().ceil() as i32;
    let factor = 10f64.powi(digits);
    (x * factor).round() / factor
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let s = summarize(&mut v);
        assert_eq!((s.p50_us, s.p99_us, s.max_us, s.count), (50.0, 99.0, 100.0, 100));
        assert_eq!(round(1234.5), 1230.0);
        assert_eq!(round(0.012345), 0.0123);
    }
}
