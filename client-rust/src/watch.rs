//! A watch that survives agent restarts and token rotation: reconnect with
//! jittered backoff, send the revisions already delivered, drop anything the
//! caller has already seen.
//!
//! The agent ends a watch `UNAUTHENTICATED` when the token it was opened with
//! expires; kubelet has rotated the token file by then, so the watch reconnects
//! with the file read again. `PERMISSION_DENIED` (access revoked) ends the watch.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures::Stream;
use futures::future::BoxFuture;
use tonic::Code;

use crate::event_decoder::Received;
use crate::{Client, Error, Event, EventKind, SecretRef, proto};

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Reconnects after `UNAUTHENTICATED` before the watch gives up (the token
/// file was not rotated: the token is bad for good).
const REAUTH_ATTEMPTS: u32 = 5;
/// A stream open this long proves its token was good: the attempts refill.
const SETTLED: Duration = Duration::from_secs(30);

/// Stream of watch events; see [`Client::watch`].
///
/// Polled by hand: an open stream's events go straight from tonic to the
/// caller, and only a reconnect (backoff, then a new call) is a future. As a
/// `futures::stream::unfold`, each event built a new future and moved it,
/// with the watch's state, several times: 250 instructions of the 12,580 an
/// event cost a pod (callgrind, `vaultlet-bench --only instructions`).
pub struct WatchStream {
    /// None once the watch has failed for good, or while `connecting` holds
    /// it (boxed: a pointer moves into the reconnect for less than the state).
    state: Option<Box<State>>,
    connecting: Option<BoxFuture<'static, Result<Box<State>, Error>>>,
}

impl WatchStream {
    pub(crate) fn new(client: Client, refs: Vec<SecretRef>) -> Self {
        let held = vec![Held::default(); refs.len()];
        let state = Box::new(State {
            client,
            refs,
            held,
            stream: None,
            attempt: 0,
            delivered: false,
            reauth_left: REAUTH_ATTEMPTS,
            opened_at: Instant::now(),
        });
        WatchStream { state: Some(state), connecting: None }
    }

    /// Hands the state to a reconnect, after a backoff when `after` says why
    /// the last stream ended.
    fn connect(&mut self, after: Option<Error>) {
        if let Some(state) = self.state.take() {
            self.connecting = Some(Box::pin(state.connect(after)));
        }
    }

    /// The watch's last item: nothing follows it.
    fn fail(&mut self, e: Error) -> Poll<Option<Result<Event, Error>>> {
        self.state = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl Stream for WatchStream {
    type Item = Result<Event, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(connecting) = this.connecting.as_mut() {
                let connected = ready!(connecting.as_mut().poll(cx));
                this.connecting = None;
                match connected {
                    Ok(state) => this.state = Some(state),
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
            }
            let Some(state) = this.state.as_mut() else { return Poll::Ready(None) };
            let Some(stream) = state.stream.as_mut() else {
                this.connect(None);
                continue;
            };
            match ready!(Pin::new(stream).poll_next(cx)) {
                Some(Ok(msg)) => {
                    state.attempt = 0;
                    match state.accept(msg) {
                        Ok(Some(event)) => return Poll::Ready(Some(Ok(event))),
                        Ok(None) => {}
                        Err(e) => return this.fail(e),
                    }
                }
                // The agent ended the stream (shutdown): resume on the next one.
                None => {
                    state.stream = None;
                    this.connect(Some(Error::Status {
                        code: Code::Unavailable,
                        message: "agent closed the stream".into(),
                    }));
                }
                Some(Err(status)) => {
                    state.stream = None;
                    let e = Error::from(status);
                    if !is_transient(&e) && !state.may_reauthenticate(&e) {
                        return this.fail(e);
                    }
                    this.connect(Some(e));
                }
            }
        }
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
                // Into the string held before, whose buffer fits a revision:
                // no allocation per event.
                match &mut self.revision {
                    Some(held) => held.clone_from(&e.secret.revision),
                    None => self.revision = Some(e.secret.revision.clone()),
                }
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
    stream: Option<tonic::Streaming<Received>>,
    attempt: u32,
    /// The watch has been accepted once: its caller was who it must be.
    delivered: bool,
    reauth_left: u32,
    opened_at: Instant,
}

impl State {
    /// Opens the next stream, after a backoff when `after` says why the last
    /// one ended; retries while the agent is away or the token is renewed.
    async fn connect(mut self: Box<Self>, after: Option<Error>) -> Result<Box<Self>, Error> {
        if let Some(why) = after {
            self.backoff(&why).await;
        }
        loop {
            match self.client.open_watch(self.request()).await {
                Ok(s) => {
                    self.delivered = true;
                    self.opened_at = Instant::now();
                    self.stream = Some(s);
                    return Ok(self);
                }
                Err(e) if is_transient(&e) || self.may_reauthenticate(&e) => self.backoff(&e).await,
                Err(e) => return Err(e),
            }
        }
    }

    /// The event `msg` carries, unless the caller already has it.
    fn accept(&mut self, received: Received) -> Result<Option<Event>, Error> {
        let event = received?;
        let Some(held) = self.held.get_mut(event.index) else {
            return Err(Error::Protocol(format!("event for unknown index {}", event.index)));
        };
        if !held.is_news(&event) {
            return Ok(None);
        }
        held.update(&event);
        Ok(Some(event))
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
