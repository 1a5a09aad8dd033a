//! May this caller read this secret? Default deny. A ServiceAccount reads a
//! Secret of its own namespace when the Secret's
//! `vaultlet.io/allowed-service-accounts` annotation lists it, and any secret
//! an agent-wide policy file grants it (the only way across namespaces).

use std::sync::Arc;

pub use vaultlet_parse::policy_file::{Grant, PolicyFile, PolicyFileError};

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

/// Why a read is not allowed now.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("the agent is starting: it has not listed the cluster's Secrets yet; retry in a moment")]
    NotReady,
}

pub enum Policy {
    /// Development mode: everything is readable.
    AllowAll,
    /// The Secrets' own annotations, and the grants of the policy file.
    Kubernetes { source: Arc<dyn SecretSource>, grants: Vec<Grant> },
}

impl Policy {
    pub fn check(&self, caller: &Caller, id: &SecretId) -> Result<(), Refusal> {
        let (source, grants) = match self {
            Policy::AllowAll => return Ok(()),
            Policy::Kubernetes { source, grants } => (source, grants),
        };
        let Some(sa) = caller.service_account.as_deref() else {
            return Err(deny(caller, id, "the caller has no ServiceAccount".into()).into());
        };
        if grants.iter().any(|g| g.covers(&caller.namespace, sa, &id.namespace, &id.name)) {
            return Ok(());
        }
        let reason = if caller.namespace != id.namespace {
            format!("no grant of the policy file lets {}/{sa} read {id}", caller.namespace)
        } else {
            match source.access(id, sa) {
                Access::Allowed | Access::Unrestricted => return Ok(()),
                Access::NotSynced => return Err(Refusal::NotReady),
                Access::SecretAbsent => "no managed Secret of that name exists".to_owned(),
                Access::NotAnnotated => {
                    "the Secret has no vaultlet.io/allowed-service-accounts annotation (nobody may read it)".to_owned()
                }
                Access::NotListed => {
                    format!("the Secret's vaultlet.io/allowed-service-accounts annotation does not list {sa}")
                }
            }
        };
        Err(deny(caller, id, reason).into())
    }
}

fn deny(caller: &Caller, id: &SecretId, reason: String) -> Denied {
    let who = match &caller.service_account {
        Some(sa) => format!("serviceaccount {}/{sa}", caller.namespace),
        None => format!("a caller of namespace {}", caller.namespace),
    };
    Denied { caller: who, secret: id.to_string(), reason }
}

#[cfg(test)]
mod tests {
    use futures::future::BoxFuture;

    use super::*;
    use crate::source::{Loaded, Unavailable};

    /// Access as a fixed answer per secret name.
    struct Annotated;

    impl SecretSource for Annotated {
        fn load<'a>(&'a self, _: &'a SecretId, _: Option<&'a str>) -> BoxFuture<'a, Result<Loaded, Unavailable>> {
            Box::pin(async { Ok(Loaded::Absent) })
        }

        fn access(&self, id: &SecretId, sa: &str) -> Access {
            match (id.name.as_str(), sa) {
                ("open", "web") => Access::Allowed,
                ("open", _) => Access::NotListed,
                ("bare", _) => Access::NotAnnotated,
                ("starting", _) => Access::NotSynced,
                _ => Access::SecretAbsent,
            }
        }
    }

    fn denied(r: Result<(), Refusal>) -> Denied {
        match r {
            Err(Refusal::Denied(d)) => d,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    fn caller(ns: &str, sa: &str) -> Caller {
        Caller::new(ns.into(), Some(sa.into()), None)
    }

    fn policy(grants: &[(&[&str], &[&str])]) -> Policy {
        let grants = grants
            .iter()
            .map(|(f, s)| Grant {
                from: f.iter().map(|x| (*x).to_owned()).collect(),
                secrets: s.iter().map(|x| (*x).to_owned()).collect(),
            })
            .collect();
        Policy::Kubernetes { source: Arc::new(Annotated), grants }
    }

    #[test]
    fn annotations_decide_within_a_namespace() {
        let p = policy(&[]);
        assert!(p.check(&caller("app", "web"), &SecretId::new("app", "open")).is_ok());
        let d = denied(p.check(&caller("app", "worker"), &SecretId::new("app", "open")));
        assert!(d.reason.contains("does not list worker"), "{}", d.reason);
        let d = denied(p.check(&caller("app", "web"), &SecretId::new("app", "bare")));
        assert!(d.reason.contains("no vaultlet.io/allowed-service-accounts"), "{}", d.reason);
        let d = denied(p.check(&caller("app", "web"), &SecretId::new("app", "missing")));
        assert!(d.reason.contains("no managed Secret"));
        // The caller's message is the same whether the secret exists or not.
        let absent = denied(p.check(&caller("app", "worker"), &SecretId::new("app", "missing"))).to_string();
        let present = denied(p.check(&caller("app", "worker"), &SecretId::new("app", "open"))).to_string();
        assert_eq!(absent.replace("missing", "X"), present.replace("open", "X"));
    }

    #[test]
    fn before_the_source_has_listed_there_is_no_answer_either_way() {
        let p = policy(&[]);
        assert!(matches!(p.check(&caller("app", "web"), &SecretId::new("app", "starting")), Err(Refusal::NotReady)));
    }

    #[test]
    fn other_namespaces_need_a_grant() {
        let p = policy(&[(&["payments/api", "billing/*"], &["shared/db-*", "shared/tls"])]);
        let d = denied(p.check(&caller("app", "web"), &SecretId::new("other", "open")));
        assert!(d.reason.contains("no grant"), "{}", d.reason);
        assert!(p.check(&caller("payments", "api"), &SecretId::new("shared", "db-main")).is_ok());
        assert!(p.check(&caller("billing", "anyone"), &SecretId::new("shared", "tls")).is_ok());
        assert!(p.check(&caller("payments", "worker"), &SecretId::new("shared", "db-main")).is_err());
        assert!(p.check(&caller("payments", "api"), &SecretId::new("shared", "cache")).is_err());
    }
}
