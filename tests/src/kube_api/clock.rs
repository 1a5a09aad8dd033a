//! Wall-clock time in the forms the API uses (whole seconds, as the wire carries them).

use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// Seconds since the Unix epoch (JWT `iat`/`exp` form).
pub fn now_seconds() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX)
}

/// A Kubernetes `Time` at `seconds` since the epoch; the epoch itself if out of range.
pub fn time(seconds: i64) -> Time {
    Time(Timestamp::from_second(seconds).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Now, as a Kubernetes `Time`.
pub fn now() -> Time {
    time(now_seconds())
}
