//! May this caller read this secret? Default deny. A ServiceAccount reads a
//! Secret of its own namespace when the Secret's
//! `vaultlet.io/allowed-service-accounts` annotation lists it, and any secret
//! an agent-wide policy file grants it (the only way across namespaces).
//!
//! The question is asked again for every open watch whenever the answer could
//! change: the Secret changed, or the policy file was reloaded (`changes`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
pub use vaultlet_parse::policy_file::{Grant, PolicyFile, PolicyFileError};

use crate::identity::Caller;
use crate::secret::SecretId;
use crate::source::{Access, SecretSource};

/// A file being replaced takes a few events; reload once they settle.
const SETTLE: Duration = Duration::from_millis(200);

/// A refusal: what the caller is told (never whether the secret exists) and,
/// for the operator's log, which rule is missing.
#[derive(Debug, Clone, thiserror::Error)]
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
    Kubernetes { source: Arc<dyn SecretSource>, grants: Arc<Grants> },
}

/// The policy file's grants, replaced whole when the file is reloaded.
#[derive(Default)]
pub struct Grants {
    current: RwLock<Arc<Vec<Grant>>>,
    /// Bumped on every reload.
    reloads: watch::Sender<u64>,
    /// The same count, read without a lock (see `AccessStamp`).
    generation: AtomicU64,
}

impl Grants {
    pub fn new(grants: Vec<Grant>) -> Arc<Grants> {
        Arc::new(Grants {
            current: RwLock::new(Arc::new(grants)),
            reloads: watch::Sender::new(0),
            generation: AtomicU64::new(0),
        })
    }

    fn get(&self) -> Arc<Vec<Grant>> {
        self.current.read().expect("grants lock").clone()
    }

    fn replace(&self, grants: Vec<Grant>) {
        *self.current.write().expect("grants lock") = Arc::new(grants);
        // After the new grants: whoever sees the new number reads them.
        self.generation.fetch_add(1, Ordering::Release);
        self.reloads.send_modify(|n| *n += 1);
    }

    /// Loads `path` and reloads it whenever it changes (a ConfigMap update
    /// swaps a symlink in its directory, so the directory is watched). A file
    /// that no longer parses keeps the last good grants, and says why.
    pub fn follow(path: &Path) -> Result<(Arc<Grants>, notify::RecommendedWatcher), PolicyFileError> {
        let loaded = std::fs::read(path).ok();
        let grants = Grants::new(PolicyFile::load(path)?.grants);
        let (tx, rx) = mpsc::unbounded_channel();
        let watch_err = |e: notify::Error| PolicyFileError::Parse(path.display().to_string(), e.to_string());
        let mut watcher = notify::recommended_watcher(move |_event| {
            let _ = tx.send(());
        })
        .map_err(watch_err)?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        watcher.watch(dir, RecursiveMode::NonRecursive).map_err(watch_err)?;
        tokio::spawn(reload_on_change(path.to_owned(), loaded, grants.clone(), rx));
        Ok((grants, watcher))
    }
}

/// Reloads `path` after each burst of events, when its bytes differ from the
/// last loaded ones (`loaded`).
async fn reload_on_change(
    path: PathBuf,
    mut loaded: Option<Vec<u8>>,
    grants: Arc<Grants>,
    mut events: mpsc::UnboundedReceiver<()>,
) {
    while events.recv().await.is_some() {
        tokio::time::sleep(SETTLE).await;
        while events.try_recv().is_ok() {}
        let text = std::fs::read(&path).ok();
        if text == loaded {
            continue;
        }
        match PolicyFile::load(&path) {
            Ok(file) => {
                tracing::info!(path = %path.display(), grants = file.grants.len(), "policy file reloaded; open watches are checked again");
                grants.replace(file.grants);
                loaded = text;
            }
            Err(e) => tracing::error!(error = %e, "policy file not reloaded: the last good grants stay in force"),
        }
    }
}

/// What every answer of `recheck` depends on besides the caller and the
/// secret: the source's access generation (Secrets appearing, going, their
/// annotations changing) and the grants' reloads. An open watch keeps the stamp
/// of its last allowed answer and asks again only once it changed: the check
/// of each reference at each wake-up (two hash lookups, SipHash over the
/// namespace and the name) was 920 of the 10,800 instructions an event cost
/// the agent. The caller's own validity (token expiry, pod gone) is checked
/// every time all the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessStamp {
    source: u64,
    grants: u64,
}

#[cfg(test)]
impl AccessStamp {
    pub fn of_source(source: u64) -> AccessStamp {
        AccessStamp { source, grants: 0 }
    }
}

/// The answer for one (caller, secret), before it is told to anyone.
enum Verdict {
    Allowed,
    NotReady,
    /// Refused because no Secret of that name exists (in the caller's namespace).
    Absent(Denied),
    Denied(Denied),
}

impl Policy {
    pub fn check(&self, caller: &Caller, id: &SecretId) -> Result<(), Refusal> {
        match self.verdict(caller, id) {
            Verdict::Allowed => Ok(()),
            Verdict::NotReady => Err(Refusal::NotReady),
            Verdict::Absent(d) | Verdict::Denied(d) => Err(d.into()),
        }
    }

    /// May an open watch of `id` go on? As `check`, except that a Secret that
    /// is gone is no refusal: the subscriber is told it was deleted, and asked
    /// again when a Secret of that name appears.
    pub fn recheck(&self, caller: &Caller, id: &SecretId) -> Result<(), Denied> {
        match self.verdict(caller, id) {
            Verdict::Allowed | Verdict::NotReady | Verdict::Absent(_) => Ok(()),
            Verdict::Denied(d) => Err(d),
        }
    }

    fn verdict(&self, caller: &Caller, id: &SecretId) -> Verdict {
        let (source, grants) = match self {
            Policy::AllowAll => return Verdict::Allowed,
            Policy::Kubernetes { source, grants } => (source, grants),
        };
        let Some(sa) = caller.service_account.as_deref() else {
            return Verdict::Denied(deny(caller, id, "the caller has no ServiceAccount".into()));
        };
        if grants.get().iter().any(|g| g.covers(&caller.namespace, sa, &id.namespace, &id.name)) {
            return Verdict::Allowed;
        }
        if caller.namespace != id.namespace {
            let reason = format!("no grant of the policy file lets {}/{sa} read {id}", caller.namespace);
            return Verdict::Denied(deny(caller, id, reason));
        }
        let reason = match source.access(id, sa) {
            Access::Allowed | Access::Unrestricted => return Verdict::Allowed,
            Access::NotSynced => return Verdict::NotReady,
            Access::SecretAbsent => {
                return Verdict::Absent(deny(caller, id, "no managed Secret of that name exists".to_owned()));
            }
            Access::NotAnnotated => {
                "the Secret has no vaultlet.io/allowed-service-accounts annotation (nobody may read it)".to_owned()
            }
            Access::NotListed => {
                format!("the Secret's vaultlet.io/allowed-service-accounts annotation does not list {sa}")
            }
        };
        Verdict::Denied(deny(caller, id, reason))
    }

    /// The stamp answers of `recheck` depend on; `None` when the source keeps
    /// no generation (every answer must be asked anew).
    pub fn access_stamp(&self) -> Option<AccessStamp> {
        match self {
            Policy::AllowAll => Some(AccessStamp { source: 0, grants: 0 }),
            Policy::Kubernetes { source, grants } => Some(AccessStamp {
                source: source.access_generation()?,
                grants: grants.generation.load(Ordering::Acquire),
            }),
        }
    }

    /// Bumped whenever the grants change.
    pub fn changes(&self) -> Option<watch::Receiver<u64>> {
        match self {
            Policy::AllowAll => None,
            Policy::Kubernetes { grants, .. } => Some(grants.reloads.subscribe()),
        }
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

    use super::*;
    use crate::source::{Held, LoadFuture, Loaded};

    /// Access as a fixed answer per secret name.
    struct Annotated;

    impl SecretSource for Annotated {
        fn load<'a>(&'a self, _: &'a SecretId, _: Held<'a>) -> LoadFuture<'a> {
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

    /// Any access (the default answer), with a generation the test moves.
    #[derive(Default)]
    struct Generations(AtomicU64);

    impl SecretSource for Generations {
        fn load<'a>(&'a self, _: &'a SecretId, _: Held<'a>) -> LoadFuture<'a> {
            Box::pin(async { Ok(Loaded::Absent) })
        }

        fn access_generation(&self) -> Option<u64> {
            Some(self.0.load(Ordering::SeqCst))
        }
    }

    #[test]
    fn the_access_stamp_moves_with_the_source_and_the_grants_and_is_none_without_a_generation() {
        let source = Arc::new(Generations::default());
        let grants = Grants::new(Vec::new());
        let policy = Policy::Kubernetes { source: source.clone(), grants: grants.clone() };
        let first = policy.access_stamp().expect("a stamp");
        assert_eq!(policy.access_stamp(), Some(first), "nothing moved");
        source.0.fetch_add(1, Ordering::SeqCst);
        let second = policy.access_stamp().expect("a stamp");
        assert_ne!(second, first, "the source's access changed");
        grants.replace(Vec::new());
        assert_ne!(policy.access_stamp(), Some(second), "the policy file was reloaded");
        let unstamped = Policy::Kubernetes { source: Arc::new(Annotated), grants };
        assert_eq!(unstamped.access_stamp(), None, "a source without a generation: every answer is asked anew");
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
        Policy::Kubernetes { source: Arc::new(Annotated), grants: Grants::new(grants) }
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
    fn an_open_watch_keeps_a_deleted_secret_and_loses_a_refused_one() {
        let p = policy(&[]);
        assert!(p.recheck(&caller("app", "web"), &SecretId::new("app", "open")).is_ok());
        assert!(p.recheck(&caller("app", "web"), &SecretId::new("app", "gone")).is_ok(), "absent: told DELETED");
        assert!(p.recheck(&caller("app", "worker"), &SecretId::new("app", "open")).is_err());
        assert!(p.recheck(&caller("app", "web"), &SecretId::new("app", "bare")).is_err());
        // Across namespaces only a grant counts, present or not.
        assert!(p.recheck(&caller("other", "web"), &SecretId::new("app", "gone")).is_err());
    }

    #[tokio::test]
    async fn a_reloaded_policy_file_changes_the_answer_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, "grants:\n  - from: [payments/api]\n    secrets: [shared/db]\n").unwrap();
        let (grants, _watcher) = Grants::follow(&path).unwrap();
        let p = Policy::Kubernetes { source: Arc::new(Annotated), grants };
        let mut changes = p.changes().unwrap();
        let (api, db) = (caller("payments", "api"), SecretId::new("shared", "db"));
        assert!(p.check(&api, &db).is_ok());

        // Kubernetes swaps a ConfigMap's files with a rename.
        let next = dir.path().join(".policy.new");
        std::fs::write(&next, "grants: []\n").unwrap();
        std::fs::rename(&next, &path).unwrap();
        tokio::time::timeout(Duration::from_secs(5), changes.changed()).await.expect("reloaded").unwrap();
        assert!(p.check(&api, &db).is_err());

        // A broken file keeps the last good grants.
        std::fs::write(&path, "grants: [oops\n").unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!changes.has_changed().unwrap());
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
