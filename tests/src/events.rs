//! Reading watch events in tests: with a deadline, and a field's value.

use std::time::Duration;

use futures::StreamExt;
use secrecy::ExposeSecret;
use vaultlet_client::{Event, WatchStream};

/// The next event, within `within` (a test fails rather than hangs).
pub async fn next_within(events: &mut WatchStream, within: Duration) -> Event {
    tokio::time::timeout(within, events.next())
        .await
        .unwrap_or_else(|_| panic!("no event within {within:?}"))
        .expect("stream open")
        .expect("event")
}

/// The value of `field` in the event's secret.
pub fn value(e: &Event, field: &str) -> String {
    e.secret.values[field].expose_secret().to_owned()
}
