//! May this caller read this secret? Default deny. A ServiceAccount reads a
//! Secret of its own namespace when the Secret's
//! `vaultlet.io/allowed-service-accounts` annotation lists it, and any secret
//! an agent-wide policy file grants it (the only way across namespaces).

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

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
    /// The Secrets' own annotations, and the grants of the policy file.
    Kubernetes { source: Arc<dyn SecretSource>, grants: Vec<Grant> },
}

/// The policy file: `grants: [{from: [NS/SA, ...], secrets: [NS/NAME, ...]}]`,
/// where either part of a pattern may use `*` (`payments/*`, `shared/db-*`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub grants: Vec<Grant>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub from: Vec<String>,
    pub secrets: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    #[error("policy file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("policy file {0}: {1}")]
    Parse(String, String),
    #[error("policy file {0}: grant {1}: {2:?} is not NAMESPACE/NAME (either part may use *)")]
    Pattern(String, usize, String),
}

impl PolicyFile {
    pub fn load(path: &Path) -> Result<PolicyFile, PolicyFileError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyFileError::Read(name.clone(), e))?;
        let file: PolicyFile = if text.trim().is_empty() {
            PolicyFile::default()
        } else {
            serde_saphyr::from_str(&text).map_err(|e| PolicyFileError::Parse(name.clone(), e.to_string()))?
        };
        for (i, g) in file.grants.iter().enumerate() {
            if let Some(bad) = g.from.iter().chain(&g.secrets).find(|p| !is_pattern(p)) {
                return Err(PolicyFileError::Pattern(name, i + 1, bad.clone()));
            }
        }
        Ok(file)
    }
}

impl Grant {
    fn covers(&self, caller_ns: &str, sa: &str, id: &SecretId) -> bool {
        self.from.iter().any(|p| matches_pair(p, caller_ns, sa))
            && self.secrets.iter().any(|p| matches_pair(p, &id.namespace, &id.name))
    }
}

impl Policy {
    pub fn check(&self, caller: &Caller, id: &SecretId) -> Result<(), Denied> {
        let (source, grants) = match self {
            Policy::AllowAll => return Ok(()),
            Policy::Kubernetes { source, grants } => (source, grants),
        };
        let Some(sa) = caller.service_account.as_deref() else {
            return Err(deny(caller, id, "the caller has no ServiceAccount".into()));
        };
        if grants.iter().any(|g| g.covers(&caller.namespace, sa, id)) {
            return Ok(());
        }
        let reason = if caller.namespace != id.namespace {
            format!("no grant of the policy file lets {}/{sa} read {id}", caller.namespace)
        } else {
            match source.access(id, sa) {
                Access::Allowed | Access::Unrestricted => return Ok(()),
                Access::SecretAbsent => "no managed Secret of that name exists".to_owned(),
                Access::NotAnnotated => {
                    "the Secret has no vaultlet.io/allowed-service-accounts annotation (nobody may read it)".to_owned()
                }
                Access::NotListed => {
                    format!("the Secret's vaultlet.io/allowed-service-accounts annotation does not list {sa}")
                }
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

fn is_pattern(p: &str) -> bool {
    matches!(p.split_once('/'), Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains('/'))
}

fn matches_pair(pattern: &str, first: &str, second: &str) -> bool {
    pattern.split_once('/').is_some_and(|(a, b)| glob(a, first) && glob(b, second))
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('*') else { return pattern == text };
    let Some(mut remaining) = text.strip_prefix(head) else { return false };
    let mut parts: Vec<&str> = rest.split('*').collect();
    let tail = parts.pop().unwrap_or("");
    for part in parts {
        match remaining.find(part) {
            Some(i) => remaining = &remaining[i + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= tail.len() && remaining.ends_with(tail)
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
                _ => Access::SecretAbsent,
            }
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
        let d = p.check(&caller("app", "worker"), &SecretId::new("app", "open")).unwrap_err();
        assert!(d.reason.contains("does not list worker"), "{}", d.reason);
        let d = p.check(&caller("app", "web"), &SecretId::new("app", "bare")).unwrap_err();
        assert!(d.reason.contains("no vaultlet.io/allowed-service-accounts"), "{}", d.reason);
        let d = p.check(&caller("app", "web"), &SecretId::new("app", "missing")).unwrap_err();
        assert!(d.reason.contains("no managed Secret"));
        // The caller's message is the same whether the secret exists or not.
        let absent = p.check(&caller("app", "worker"), &SecretId::new("app", "missing")).unwrap_err().to_string();
        let present = p.check(&caller("app", "worker"), &SecretId::new("app", "open")).unwrap_err().to_string();
        assert_eq!(absent.replace("missing", "X"), present.replace("open", "X"));
    }

    #[test]
    fn other_namespaces_need_a_grant() {
        let p = policy(&[(&["payments/api", "billing/*"], &["shared/db-*", "shared/tls"])]);
        let d = p.check(&caller("app", "web"), &SecretId::new("other", "open")).unwrap_err();
        assert!(d.reason.contains("no grant"), "{}", d.reason);
        assert!(p.check(&caller("payments", "api"), &SecretId::new("shared", "db-main")).is_ok());
        assert!(p.check(&caller("billing", "anyone"), &SecretId::new("shared", "tls")).is_ok());
        assert!(p.check(&caller("payments", "worker"), &SecretId::new("shared", "db-main")).is_err());
        assert!(p.check(&caller("payments", "api"), &SecretId::new("shared", "cache")).is_err());
    }

    #[test]
    fn globs() {
        for (p, t) in [("*", ""), ("*", "abc"), ("db-*", "db-1"), ("*-db", "x-db"), ("a*c*e", "abcde"), ("x", "x")] {
            assert!(glob(p, t), "{p} {t}");
        }
        for (p, t) in [("db-*", "dbx"), ("*-db", "db"), ("a*c*e", "abcd"), ("x", "y"), ("a*a", "a")] {
            assert!(!glob(p, t), "{p} {t}");
        }
    }

    #[test]
    fn policy_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.yaml");
        std::fs::write(&f, "grants:\n  - from: [payments/api]\n    secrets: [shared/db]\n").unwrap();
        assert_eq!(PolicyFile::load(&f).unwrap().grants.len(), 1);
        std::fs::write(&f, "grants:\n  - from: [payments]\n    secrets: [shared/db]\n").unwrap();
        assert!(PolicyFile::load(&f).unwrap_err().to_string().contains("\"payments\""));
        std::fs::write(&f, "grant: []\n").unwrap();
        assert!(PolicyFile::load(&f).is_err());
    }
}
