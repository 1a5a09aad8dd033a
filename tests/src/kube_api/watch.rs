//! Watch streams: newline-delimited `WatchEvent` JSON over a chunked response, as the
//! apiserver's watch cache serves them. A watch that cannot start (its version is older
//! than the history) still answers 200, with one ERROR event carrying the Status: that is
//! what kube-rs's watcher and client-go's reflector look for to re-list.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::WatchEvent;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, interval_at, sleep};
use tokio_stream::wrappers::ReceiverStream;

use super::error::ApiError;
use super::http::Body;
use super::object::{Kind, Object};
use super::selector::Filter;
use super::state::State;
use super::store::{Change, Event, WatchFrom, WatchStart};

/// A real apiserver closes a watch without `timeoutSeconds` after 30 to 60 minutes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub struct WatchParams {
    pub from: WatchFrom,
    pub bookmarks: bool,
    pub timeout: Duration,
}

type Chunk = Result<Frame<Bytes>, Infallible>;

/// k8s-openapi's `WatchEvent::Bookmark` leaves out `kind` and `apiVersion`, which real
/// servers send and kube-rs requires; a bookmark is an empty object of the watched kind.
#[derive(Serialize)]
struct Bookmark {
    #[serde(rename = "type")]
    type_: &'static str,
    object: Object,
}

fn line(value: &impl Serialize) -> Option<Bytes> {
    let mut bytes = serde_json::to_vec(value).ok()?;
    bytes.push(b'\n');
    Some(Bytes::from(bytes))
}

/// What a watch with `filter` sees of `event`: a change across the selector's edge is
/// an ADDED or DELETED for this watch, as with the apiserver.
fn encode(filter: &Filter, event: &Event) -> Option<Bytes> {
    let now = filter.matches(&event.object);
    let watch_event = match event.change {
        Change::Added if now => WatchEvent::Added(&event.object),
        Change::Deleted if now => WatchEvent::Deleted(&event.object),
        Change::Modified => {
            let before = event.previous.as_ref().is_some_and(|p| filter.matches(p));
            match (before, now) {
                (true, true) => WatchEvent::Modified(&event.object),
                (false, true) => WatchEvent::Added(&event.object),
                (true, false) => WatchEvent::Deleted(&event.object),
                (false, false) => return None,
            }
        }
        Change::Added | Change::Deleted => return None,
    };
    line(&watch_event)
}

/// Answers a watch request: the response goes back at once, events follow as they come.
pub fn respond(state: Arc<State>, kind: Kind, filter: Filter, params: WatchParams) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Chunk>(64);
    let start = state.store.watch(kind, params.from);
    tokio::spawn(async move {
        match start {
            Ok(start) => stream(&state, kind, &filter, &params, start, &tx).await,
            Err(e) => {
                let _ = send(&tx, line(&WatchEvent::<Object>::ErrorStatus(e.to_status()))).await;
            }
        }
    });
    let mut response = Response::new(StreamBody::new(ReceiverStream::new(rx)).boxed());
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Sends one line; false once the client has gone.
async fn send(tx: &mpsc::Sender<Chunk>, line: Option<Bytes>) -> bool {
    match line {
        Some(bytes) => tx.send(Ok(Frame::data(bytes))).await.is_ok(),
        None => true,
    }
}

async fn stream(
    state: &State,
    kind: Kind,
    filter: &Filter,
    params: &WatchParams,
    start: WatchStart,
    tx: &mpsc::Sender<Chunk>,
) {
    // Subscribed before anything is sent, so a drop from now on is never missed.
    let mut drops = state.faults.watch_drops();
    let mut shutdown = state.shutdown.clone();
    for event in &start.initial {
        if drops.has_changed().unwrap_or(true) || !send(tx, encode(filter, event)).await {
            return;
        }
    }
    // The version this watch has seen everything up to: what a bookmark may promise.
    let mut seen = start.resource_version;
    let mut live = start.live;
    let deadline = sleep(params.timeout);
    tokio::pin!(deadline);
    let period = state.bookmark_interval;
    let mut bookmarks = interval_at(Instant::now() + period, period);
    loop {
        // Biased: once a watch is dropped or the server stops, no further event goes out,
        // even one that is already waiting (a dropped connection delivers nothing more).
        let line = tokio::select! {
            biased;
            _ = drops.changed() => return,
            _ = shutdown.changed() => return,
            () = tx.closed() => return,
            () = &mut deadline => return,
            received = live.recv() => match received {
                Ok(event) => {
                    seen = event.resource_version;
                    if event.object.kind() != kind {
                        continue;
                    }
                    encode(filter, &event)
                }
                // Too slow to keep up, as the apiserver does with a slow watcher: end the
                // watch, the client resumes from the last version it got.
                Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => return,
            },
            _ = bookmarks.tick(), if params.bookmarks => line(&Bookmark { type_: "BOOKMARK", object: kind.bookmark(seen) }),
        };
        if line.is_some() {
            // A hung server holds the line; a drop meanwhile still wins.
            tokio::select! {
                biased;
                _ = drops.changed() => return,
                () = state.faults.released() => {}
            }
        }
        if !send(tx, line).await {
            return;
        }
    }
}

/// Parses where a watch starts from its `resourceVersion` parameter.
pub fn from(resource_version: Option<u64>) -> WatchFrom {
    match resource_version {
        None | Some(0) => WatchFrom::Current,
        Some(v) => WatchFrom::After(v),
    }
}

/// Not implemented here, and refused as by a server without the WatchList feature.
pub fn refuse_send_initial_events() -> ApiError {
    ApiError::Invalid {
        kind: "ListOptions",
        group: "meta.k8s.io",
        name: String::new(),
        causes: vec![super::error::FieldError::forbidden(
            "sendInitialEvents",
            "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
        )],
    }
}
