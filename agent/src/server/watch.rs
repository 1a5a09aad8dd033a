//! An open watch: the hub's events on the wire, each reference authorized
//! again on every wake-up (`Guard`). A revocation ends the stream with
//! `PERMISSION_DENIED` (the grant is gone) or `UNAUTHENTICATED` (token expired,
//! pod gone: the clients reconnect with the rotated token), and is audited.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tonic::Status;
use vaultlet_client::encoded::EncodedEvent;

use super::encode::encode_event;
use super::service::{EventStream, Parts, Process, opening_record};
use crate::audit::{AuditLog, Decision};
use crate::hub::{self, Authorize, Events, Item, Revoked, Watched};
use crate::identity::{Authenticator, Caller};
use crate::limits::Slot;
use crate::metrics::{Metrics, Open};
use crate::policy::{AccessStamp, Policy};
use crate::secret::SecretId;

/// The check an open watch makes on every wake-up.
struct Guard {
    caller: Arc<Caller>,
    auth: Arc<Authenticator>,
    policy: Arc<Policy>,
}

impl Authorize for Guard {
    /// The caller's validity every time; the policy again only once its
    /// stamp moved since the last allowed answer (see `AccessStamp`).
    fn authorize(&self, id: &SecretId, allowed: &mut Option<AccessStamp>) -> Result<(), Revoked> {
        if let Err(e) = self.auth.still_valid(&self.caller) {
            let message = e.to_string();
            return Err(Revoked { index: 0, code: tonic::Code::Unauthenticated, reason: message.clone(), message });
        }
        // Taken before the check: a change during it moves the stamp again.
        let stamp = self.policy.access_stamp();
        if stamp.is_some() && *allowed == stamp {
            return Ok(());
        }
        self.policy.recheck(&self.caller, id).map_err(|denied| Revoked {
            index: 0,
            code: tonic::Code::PermissionDenied,
            message: format!("access revoked: {denied}"),
            reason: denied.reason,
        })?;
        *allowed = stamp;
        Ok(())
    }
}

/// What every open watch follows besides its secrets: one channel that
/// changes whenever each must check its access again (pods gone, a policy
/// reload) or end (the agent shuts down), so that each stream waits on one
/// channel rather than on each of them; and whether the agent is shutting
/// down, read without a lock. (A `CancellationToken` takes its mutex at each
/// look: every stream looked at every wake-up, one mutex for 10,000 streams
/// on both workers, 150 instructions an event.)
#[derive(Clone)]
pub struct Rechecks {
    changes: watch::Receiver<u64>,
    ended: Arc<AtomicBool>,
}

pub fn rechecks(parts: &Parts) -> Rechecks {
    let (tx, rx) = watch::channel(0);
    let sources: Vec<_> = parts.auth.changes().into_iter().chain(parts.policy.changes()).collect();
    let mut changes = futures::stream::select_all(sources.into_iter().map(WatchStream::from_changes));
    let shutdown = parts.shutdown.clone();
    let ended = Arc::new(AtomicBool::new(false));
    let set_ended = ended.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(_) = changes.next() => tx.send_modify(|n| *n += 1),
            }
        }
        // Before the wake-up: every stream it wakes sees that it must end.
        set_ended.store(true, Ordering::Release);
        tx.send_modify(|n| *n += 1);
    });
    Rechecks { changes: rx, ended }
}

/// The stream of `watched` for `caller`, holding its place among the peer's
/// streams (`slot`) until it ends. A revocation is recorded in the terms of
/// the call that opened it, made by `process` (`opening_record`).
pub fn stream(
    parts: &Arc<Parts>,
    rechecks: Rechecks,
    caller: Arc<Caller>,
    watched: Vec<Watched>,
    slot: Slot,
    process: Process,
) -> EventStream {
    let until = caller.valid_until.map(|t| Instant::now() + t.duration_since(SystemTime::now()).unwrap_or_default());
    let guard = Arc::new(Guard { caller: caller.clone(), auth: parts.auth.clone(), policy: parts.policy.clone() });
    let delays = parts.metrics.latency.propagation.clone();
    Box::pin(Watch {
        events: hub::events(watched, guard, Some(rechecks.changes), until, delays),
        ended: rechecks.ended,
        ending: None,
        audit: parts.audit.clone(),
        metrics: parts.metrics.clone(),
        caller,
        process,
        _held: (Open::new(&parts.metrics.watch_streams), slot),
    })
}

pin_project_lite::pin_project! {
    /// One open watch: a single allocation, polled by hand (see `hub`).
    struct Watch {
        #[pin]
        events: Events,
        // Streams end when the agent shuts down, so that clients reconnect to the next one.
        ended: Arc<AtomicBool>,
        // A revocation being audited; the stream ends with its status.
        ending: Option<BoxFuture<'static, Status>>,
        audit: Option<AuditLog>,
        metrics: Arc<Metrics>,
        caller: Arc<Caller>,
        process: Process,
        _held: (Open, Slot),
    }
}

impl Stream for Watch {
    type Item = Result<EncodedEvent, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        if let Some(ending) = this.ending.as_mut() {
            let status = std::task::ready!(ending.poll_unpin(cx));
            *this.ending = None;
            return Poll::Ready(Some(Err(status)));
        }
        if this.ended.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        match std::task::ready!(this.events.as_mut().poll_next(cx)) {
            None => Poll::Ready(None),
            Some(Item::Event(e)) => {
                let (id, reference) = this.events.as_ref().get_ref().target(&e);
                Poll::Ready(Some(Ok(encode_event(e, id, reference))))
            }
            Some(Item::Revoked(r)) => {
                this.metrics.watch_revocations.inc();
                tracing::info!(caller = this.caller.audit_name.as_deref(), reason = %r.reason, "watch revoked");
                let references = this.events.as_ref().get_ref().references();
                let mut record = opening_record(*this.process, this.caller, references);
                record.decision = Decision::Revoked;
                record.status = Some(vaultlet_client::code_name(r.code));
                record.set_reason(&r.reason);
                let audit = this.audit.clone();
                let mut ending = async move {
                    // The stream ends either way: no value follows a revocation.
                    if let Some(log) = audit {
                        let _ = log.commit(record).await;
                    }
                    Status::new(r.code, r.message)
                }
                .boxed();
                match ending.poll_unpin(cx) {
                    Poll::Ready(status) => Poll::Ready(Some(Err(status))),
                    Poll::Pending => {
                        *this.ending = Some(ending);
                        Poll::Pending
                    }
                }
            }
        }
    }
}
