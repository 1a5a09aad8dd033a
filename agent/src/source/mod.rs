//! Where secrets come from: the `SecretSource` abstraction and its implementations
//! (`file` for development; `kube` + Transit in production).

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::secret::{SecretId, SecretVersion};

pub mod file;
pub mod kube;

/// Sources announce changed secrets on this channel; the cache reloads the ones
/// somebody asked for.
pub type ChangeSender = mpsc::UnboundedSender<Change>;
pub type ChangeReceiver = mpsc::UnboundedReceiver<Change>;

/// A secret that changed (or appeared, or went).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub id: SecretId,
    /// Who may read it may have changed (its readers' annotation, or it went):
    /// open watches check their access at once, before it is loaded again.
    pub access: bool,
}

pub fn change_channel() -> (ChangeSender, ChangeReceiver) {
    mpsc::unbounded_channel()
}

/// The outcome of loading a secret.
pub enum Loaded {
    /// No such secret.
    Absent,
    /// Still at the revision the caller already holds (nothing was decoded).
    Unchanged,
    Version(SecretVersion),
    /// The secret exists at this revision but cannot be decoded (bad ciphertext,
    /// a document that does not parse). Retrying will not help until it changes.
    Invalid {
        revision: String,
        message: String,
    },
}

pub type LoadFuture<'a> = BoxFuture<'a, Result<Loaded, Unavailable>>;

/// What the cache already holds of a secret when it loads it again.
#[derive(Clone, Copy, Default)]
pub struct Held<'a> {
    /// The revision of its last load attempt, good or bad.
    pub revision: Option<&'a str>,
    /// Its last good version.
    pub version: Option<&'a SecretVersion>,
}

/// What a secret's metadata says about one service account reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The source has no access metadata (development mode).
    Unrestricted,
    SecretAbsent,
    /// The secret has no allowed-service-accounts annotation: nobody may read it.
    NotAnnotated,
    NotListed,
    Allowed,
    /// The source has not listed its secrets yet (the agent is starting): no
    /// answer either way.
    NotSynced,
}

/// A backend needed to decode the secret cannot be reached; retrying may help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

pub trait SecretSource: Send + Sync + 'static {
    /// Loads and decodes the current version of `id`. A source may answer
    /// `Unchanged` without decoding when the revision is still `held.revision`,
    /// and reuse what did not change since `held.version`.
    fn load<'a>(&'a self, id: &'a SecretId, held: Held<'a>) -> LoadFuture<'a>;

    /// Whether the secret's own metadata lets `service_account` (of the
    /// secret's namespace) read it; read without decoding anything.
    fn access(&self, id: &SecretId, service_account: &str) -> Access {
        let _ = (id, service_account);
        Access::Unrestricted
    }

    /// A number that changes whenever an answer of `access` may have; `None`
    /// when the source keeps none (each answer must then be asked anew).
    fn access_generation(&self) -> Option<u64> {
        None
    }

    /// A hint for a person when `id` does not exist (where it was looked for).
    fn absent_hint(&self, id: &SecretId) -> Option<String> {
        let _ = id;
        None
    }
}
