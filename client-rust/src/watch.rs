//! A watch that survives agent restarts and token rotation: reconnect with
//! jittered backoff, send the revisions already delivered, drop anything the
//! caller has already seen.
//!
//! The agent ends a watch `UNAUTHENTICATED` when the token it was opened with
//! expires; kubelet has rotated the token file by then, so the watch reconnects
//! with the file read again. `PERMISSION_DENIED` (access revoked) ends the watch.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use futures::stream::BoxStream;
use tonic::Code;

use crate::{Client, Error, Event, EventKind, SecretRef, proto};

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Reconnects after `UNAUTHENTICATED` before the watch gives up (the token
/// file was not rotated: the token is bad for good).
const REAUTH_ATTEMPTS: u32 = 5;
/// A stream open this long proves its token was good: the attempts refill.
const SETTLED: Duration = Duration::from_secs(30);

/// Stream of watch events; see [`Client::watch`].
pub struct WatchStream {
    inner: BoxStream<'static, Result<Event, Error>>,
}

impl WatchStream {
    pub(crate) fn new(client: Client, refs: Vec<SecretRef>) -> Self {
        let held = vec![Held::default(); refs.len()];
        // Boxed: the stream hands its state from one event's future to the
        // next, and a pointer moves for less than the state (a tonic stream).
        let state = Box::new(State {
            client,
            refs,
            held,
            stream: None,
            attempt: 0,
            done: false,
            delivered: false,
            reauth_left: REAUTH_ATTEMPTS,
            opened_at: Instant::now(),
        });
        WatchStream { inner: Box::pin(futures::stream::unfold(state, State::next)) }
    }
}

impl Stream for WatchStream {
    type Item = Result<Event, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// What the caller holds for one reference.
#[derive(Clone, Default)]
struct Held {
    revision: Option<String>,
    deleted: bool,
    failed_revision: Option<String>,
}

impl Held {
    /// False when the event repeats what the caller already has (after a reconnect).
    fn is_news(&self, e: &Event) -> bool {
        match e.kind {
            EventKind::Deleted => !self.deleted,
            EventKind::Error => {
                let failed = e.error.as_ref().map(|err| &err.revision);
                failed != self.failed_revision.as_ref()
            }
            _ => self.revision.as_deref() != Some(e.secret.revision.as_str()),
        }
    }

    fn update(&mut self, e: &Event) {
        match e.kind {
            EventKind::Deleted => *self = Held { deleted: true, ..Held::default() },
            EventKind::Error => self.failed_revision = e.error.as_ref().map(|err| err.revision.clone()),
            _ => {
                self.revision = Some(e.secret.revision.clone());
                self.deleted = false;
                self.failed_revision = None;
            }
        }
    }
}

struct State {
    client: Client,
    refs: Vec<SecretRef>,
    held: Vec<Held>,
    stream: Option<tonic::Streaming<proto::SecretEvent>>,
    attempt: u32,
    done: bool,
    /// The watch has been accepted once: its caller was who it must be.
    delivered: bool,
    reauth_left: u32,
    opened_at: Instant,
}

impl State {
    async fn next(mut self: Box<Self>) -> Option<(Result<Event, Error>, Box<State>)> {
        if self.done {
            return None;
        }
        loop {
            let stream = match self.stream.as_mut() {
                Some(s) => s,
                None => match self.client.open_watch(self.request()).await {
                    Ok(s) => {
                        self.delivered = true;
                        self.opened_at = Instant::now();
                        self.stream.insert(s)
                    }
                    Err(e) if is_transient(&e) || self.may_reauthenticate(&e) => {
                        self.backoff(&e).await;
                        continue;
                    }
                    Err(e) => return self.fail(e),
                },
            };
            match stream.message().await {
                Ok(Some(msg)) => {
                    self.attempt = 0;
                    let event = match Event::from_proto(msg) {
                        Ok(e) if e.index < self.held.len() => e,
                        Ok(e) => {
                            return self.fail(Error::Protocol(format!("event for unknown index {}", e.index)));
                        }
                        Err(e) => return self.fail(e),
                    };
                    let held = &mut self.held[event.index];
                    if held.is_news(&event) {
                        held.update(&event);
                        return Some((Ok(event), self));
                    }
                }
                // The agent ended the stream (shutdown): resume on the next one.
                Ok(None) => {
                    self.stream = None;
                    self.backoff(&Error::Status { code: Code::Unavailable, message: "agent closed the stream".into() })
                        .await;
                }
                Err(status) => {
                    self.stream = None;
                    let e = Error::from(status);
                    if !is_transient(&e) && !self.may_reauthenticate(&e) {
                        return self.fail(e);
                    }
                    self.backoff(&e).await;
                }
            }
        }
    }

    fn request(&self) -> proto::WatchSecretsRequest {
        let secrets = self
            .refs
            .iter()
            .zip(&self.held)
            .map(|(r, h)| proto::WatchedSecret {
                r#ref: Some(r.clone().into()),
                known_revision: h.revision.clone().unwrap_or_default(),
            })
            .collect();
        proto::WatchSecretsRequest { secrets }
    }

    /// An `UNAUTHENTICATED` worth a reconnect: the watch was accepted before
    /// (its token has expired since), within a few attempts.
    fn may_reauthenticate(&mut self, e: &Error) -> bool {
        if e.code() != Code::Unauthenticated || !self.delivered {
            return false;
        }
        if self.opened_at.elapsed() >= SETTLED {
            self.reauth_left = REAUTH_ATTEMPTS;
        }
        if self.reauth_left == 0 {
            return false;
        }
        self.reauth_left -= 1;
        true
    }

    fn fail(mut self: Box<Self>, e: Error) -> Option<(Result<Event, Error>, Box<State>)> {
        self.done = true;
        Some((Err(e), self))
    }

    /// Exponential backoff with jitter (half to all of the cap): a node's pods
    /// do not all reconnect at once.
    async fn backoff(&mut self, why: &Error) {
        let cap = BACKOFF_FIRST.saturating_mul(1 << self.attempt.min(6)).min(BACKOFF_MAX);
        let wait = cap.mul_f64(0.5 + fastrand::f64() / 2.0);
        self.attempt += 1;
        tracing::debug!(error = %why, wait_ms = wait.as_millis() as u64, "vaultlet watch reconnecting");
        tokio::time::sleep(wait).await;
    }
}

/// Errors a restart of the agent produces; anything else is about the request.
fn is_transient(e: &Error) -> bool {
    matches!(e.code(), Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled)
        && !matches!(e, Error::Protocol(_) | Error::TokenFile { .. })
}
