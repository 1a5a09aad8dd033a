//! Why a call failed, as typed errors, and the one place they become gRPC
//! statuses, with messages a person can act on.

use vaultlet_client::RefError;

use crate::audit::{Decision, NotWritten};
use crate::identity::AuthError;
use crate::identity::review::ReviewError;
use crate::limits::Refused;
use crate::policy::Denied;
use crate::secret::{ProjectionError, SecretId};
use crate::source::Unavailable;

/// Most references in one request.
pub const MAX_REFS: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Unauthenticated(#[from] AuthError),
    #[error("secrets[{index}]: {error}")]
    InvalidRef { index: usize, error: RefError },
    #[error("no secrets requested: name at least one reference")]
    NoRefs,
    #[error("{0} references in one request; the limit is {MAX_REFS}")]
    TooManyRefs(usize),
    #[error("{reference}: permission denied: {denied}")]
    Denied { reference: String, denied: Denied },
    #[error("secret {id} not found{}", hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    NotFound { id: SecretId, hint: Option<String> },
    #[error("{reference}: {error}")]
    Projection { reference: String, error: ProjectionError },
    #[error("secret {id} cannot be decoded: {message}")]
    Undecodable { id: SecretId, message: String },
    #[error("{reference}: {error}")]
    Unavailable { reference: String, error: Unavailable },
    #[error("{0}")]
    Limit(#[from] Refused),
    #[error("the agent is starting: it has not listed the cluster's Secrets yet; retry in a moment")]
    Starting,
    /// The decision could not be recorded, so nothing is released.
    #[error("{0}; nothing is released until it is")]
    Audit(#[from] NotWritten),
}

impl ServiceError {
    pub fn code(&self) -> tonic::Code {
        match self {
            ServiceError::Unauthenticated(a) if a.is_unavailable() => tonic::Code::Unavailable,
            ServiceError::Unauthenticated(AuthError::Review(ReviewError::RateLimited)) => {
                tonic::Code::ResourceExhausted
            }
            ServiceError::Unauthenticated(_) => tonic::Code::Unauthenticated,
            ServiceError::InvalidRef { .. } | ServiceError::NoRefs | ServiceError::TooManyRefs(_) => {
                tonic::Code::InvalidArgument
            }
            ServiceError::Denied { .. } => tonic::Code::PermissionDenied,
            ServiceError::NotFound { .. } => tonic::Code::NotFound,
            ServiceError::Projection { error, .. } => error.code(),
            ServiceError::Undecodable { .. } => tonic::Code::FailedPrecondition,
            ServiceError::Unavailable { .. } | ServiceError::Starting | ServiceError::Audit(_) => {
                tonic::Code::Unavailable
            }
            ServiceError::Limit(_) => tonic::Code::ResourceExhausted,
        }
    }

    /// The decision a refusal before any secret was loaded stands for.
    pub fn decision(&self) -> Decision {
        match self {
            ServiceError::Unauthenticated(e) if e.is_unavailable() => Decision::Unavailable,
            ServiceError::Starting | ServiceError::Audit(_) => Decision::Unavailable,
            ServiceError::Unauthenticated(_) => Decision::Unauthenticated,
            ServiceError::Denied { .. } => Decision::Denied,
            _ => Decision::Invalid,
        }
    }

    /// What the operator's log and the audit record say: for a denial, the
    /// rule that is missing (the caller is told less).
    pub fn reason(&self) -> String {
        match self {
            ServiceError::Denied { denied, .. } => denied.reason.clone(),
            other => other.to_string(),
        }
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> tonic::Status {
        tonic::Status::new(e.code(), e.to_string())
    }
}
