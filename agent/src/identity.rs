//! Who is calling. Development mode trusts every caller of the socket.

/// The authenticated caller of one request.
#[derive(Clone, Debug)]
pub struct Caller {
    /// References without a namespace resolve here.
    pub namespace: String,
    /// `None` in development mode.
    pub service_account: Option<String>,
}

/// Why a caller was not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {}

/// How callers are authenticated.
pub enum Authenticator {
    /// Development mode: no credential, every caller is in `namespace`.
    Open { namespace: String },
}

impl Authenticator {
    pub async fn authenticate<T>(&self, _request: &tonic::Request<T>) -> Result<Caller, AuthError> {
        match self {
            Authenticator::Open { namespace } => Ok(Caller {
                namespace: namespace.clone(),
                service_account: None,
            }),
        }
    }
}
