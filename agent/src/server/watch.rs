//! An open watch: the hub's events on the wire, each reference authorized
//! again on every wake-up (`Guard`). A revocation ends the stream with
//! `PERMISSION_DENIED` (the grant is gone) or `UNAUTHENTICATED` (token expired,
//! pod gone: the clients reconnect with the rotated token), and is audited.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures::StreamExt;
use tonic::Status;

use super::encode::encode_event;
use super::service::{EventStream, Parts};
use crate::audit::{Decision, Record};
use crate::hub::{self, Authorize, Item, Revoked, Watched};
use crate::identity::{Authenticator, Caller};
use crate::limits::Slot;
use crate::metrics::Open;
use crate::policy::Policy;
use crate::secret::SecretId;

/// The check an open watch makes on every wake-up.
struct Guard {
    caller: Arc<Caller>,
    auth: Arc<Authenticator>,
    policy: Arc<Policy>,
}

impl Authorize for Guard {
    fn authorize(&self, id: &SecretId) -> Result<(), Revoked> {
        if let Err(e) = self.auth.still_valid(&self.caller) {
            let message = e.to_string();
            return Err(Revoked { index: 0, code: tonic::Code::Unauthenticated, reason: message.clone(), message });
        }
        self.policy.recheck(&self.caller, id).map_err(|denied| Revoked {
            index: 0,
            code: tonic::Code::PermissionDenied,
            message: format!("access revoked: {denied}"),
            reason: denied.reason,
        })
    }
}

/// The stream of `watched` for `caller`, holding its place among the peer's
/// streams (`slot`) until it ends. `opened` is the record of the call that
/// opened it: a revocation is recorded in its terms.
pub fn stream(
    parts: &Arc<Parts>,
    caller: Arc<Caller>,
    watched: Vec<Watched>,
    slot: Slot,
    opened: Record,
) -> EventStream {
    let mut wakes = Vec::new();
    wakes.extend(parts.auth.changes());
    wakes.extend(parts.policy.changes());
    let until = caller.valid_until.map(|t| Instant::now() + t.duration_since(SystemTime::now()).unwrap_or_default());
    let guard = Arc::new(Guard { caller, auth: parts.auth.clone(), policy: parts.policy.clone() });
    let held = (Open::new(&parts.metrics.watch_streams), slot);
    let (audit, metrics) = (parts.audit.clone(), parts.metrics.clone());
    let delays = metrics.latency.propagation.clone();
    let events = hub::events(watched, guard, wakes, until, delays).then(move |item| {
        let _held = &held;
        let (audit, metrics, opened) = (audit.clone(), metrics.clone(), opened.clone());
        async move {
            match item {
                Item::Event(e) => Ok(encode_event(e)),
                Item::Revoked(r) => {
                    metrics.watch_revocations.inc();
                    tracing::info!(caller = opened.caller.as_deref(), reason = %r.reason, "watch revoked");
                    if let Some(log) = audit {
                        let mut record = Record {
                            decision: Decision::Revoked,
                            status: Some(vaultlet_client::code_name(r.code)),
                            ..opened
                        };
                        record.set_reason(&r.reason);
                        // The stream ends either way: no value follows a revocation.
                        let _ = log.commit(record).await;
                    }
                    Err(Status::new(r.code, r.message))
                }
            }
        }
    });
    // Streams end when the agent shuts down, so that clients reconnect to the next one.
    Box::pin(events.take_until(parts.shutdown.clone().cancelled_owned()))
}
