//! Who is calling: in production a verified ServiceAccount token (see
//! `review`); in development mode every caller of the socket.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};

pub mod review;
pub mod token;

use review::{ReviewError, Reviewed, Reviewer};
use token::TokenError;

/// The authenticated caller of one request.
#[derive(Clone, Debug)]
pub struct Caller {
    /// References without a namespace resolve here.
    pub namespace: String,
    /// `None` in development mode.
    pub service_account: Option<String>,
    /// The pod the token is bound to (production).
    pub pod: Option<Arc<Reviewed>>,
}

/// Why a caller was not authenticated. Messages tell the caller what to fix
/// and never contain the token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no ServiceAccount token: send `authorization: Bearer <token>` with the projected token of audience {audience:?}"
    )]
    MissingToken { audience: String },
    #[error("the authorization metadata is not `Bearer <token>`")]
    MalformedHeader,
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("{0}")]
    Review(#[from] ReviewError),
}

impl AuthError {
    /// An outage of the API server is not the caller's fault: it may retry.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AuthError::Review(ReviewError::Unavailable(_)))
    }
}

/// How callers are authenticated.
pub enum Authenticator {
    /// Development mode: no credential, every caller is in `namespace`.
    Open { namespace: String },
    /// ServiceAccount tokens verified by TokenReview.
    Kubernetes { audience: String, reviewer: Reviewer },
}

impl Authenticator {
    pub async fn authenticate<T>(&self, request: &tonic::Request<T>) -> Result<Caller, AuthError> {
        let (audience, reviewer) = match self {
            Authenticator::Open { namespace } => {
                return Ok(Caller { namespace: namespace.clone(), service_account: None, pod: None });
            }
            Authenticator::Kubernetes { audience, reviewer } => (audience, reviewer),
        };
        let token = bearer(request, audience)?;
        let claims = token::peek(token.expose_secret())?;
        token::precheck(&claims, audience, unix_now())?;
        let reviewed = reviewer.review(token.expose_secret(), &claims).await?;
        Ok(Caller {
            namespace: reviewed.namespace.clone(),
            service_account: Some(reviewed.service_account.clone()),
            pod: Some(reviewed),
        })
    }
}

/// The token of `authorization: Bearer <token>`.
fn bearer<T>(request: &tonic::Request<T>, audience: &str) -> Result<SecretString, AuthError> {
    let value = request
        .metadata()
        .get("authorization")
        .ok_or_else(|| AuthError::MissingToken { audience: audience.to_owned() })?;
    let text = value.to_str().map_err(|_| AuthError::MalformedHeader)?;
    let (scheme, token) = text.split_once(' ').ok_or(AuthError::MalformedHeader)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::MalformedHeader);
    }
    Ok(SecretString::from(token.trim()))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}
