//! May this caller read this secret? Default deny: a ServiceAccount reads a
//! Secret of its own namespace only when the Secret's
//! `vaultlet.io/allowed-service-accounts` annotation lists it.

use std::sync::Arc;

use crate::identity::Caller;
use crate::secret::SecretId;
use crate::source::{Access, SecretSource};

/// A refusal: what the caller is told (never whether the secret exists) and,
/// for the operator's log, which rule is missing.
#[derive(Debug, thiserror::Error)]
#[error("{caller} may not read secret {secret}")]
pub struct Denied {
    pub caller: String,
    pub secret: String,
    pub reason: String,
}

pub enum Policy {
    /// Development mode: everything is readable.
    AllowAll,
    /// The Secrets' own annotations.
    Annotations { source: Arc<dyn SecretSource> },
}

impl Policy {
    pub fn check(&self, caller: &Caller, id: &SecretId) -> Result<(), Denied> {
        let source = match self {
            Policy::AllowAll => return Ok(()),
            Policy::Annotations { source } => source,
        };
        let Some(sa) = caller.service_account.as_deref() else {
            return Err(deny(caller, id, "the caller has no ServiceAccount".into()));
        };
        if caller.namespace != id.namespace {
            return Err(deny(
                caller,
                id,
                format!("no rule lets namespace {} read secrets of namespace {}", caller.namespace, id.namespace),
            ));
        }
        let reason = match source.access(id, sa) {
            Access::Allowed | Access::Unrestricted => return Ok(()),
            Access::SecretAbsent => "no managed Secret of that name exists".to_owned(),
            Access::NotAnnotated => {
                "the Secret has no vaultlet.io/allowed-service-accounts annotation (nobody may read it)".to_owned()
            }
            Access::NotListed => {
                format!("the Secret's vaultlet.io/allowed-service-accounts annotation does not list {sa}")
            }
        };
        Err(deny(caller, id, reason))
    }
}

fn deny(caller: &Caller, id: &SecretId, reason: String) -> Denied {
    let who = match &caller.service_account {
        Some(sa) => format!("serviceaccount {}/{sa}", caller.namespace),
        None => format!("a caller of namespace {}", caller.namespace),
    };
    Denied { caller: who, secret: id.to_string(), reason }
}
