//! The client's error type: the agent's gRPC status, or what kept the call from
//! reaching it.

use tonic::Code;

use crate::reference::RefError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The agent answered with a status (its message is meant for a person).
    #[error("{}: {message}", code_name(*code))]
    Status { code: Code, message: String },
    /// The agent's socket could not be reached.
    #[error(
        "UNAVAILABLE: cannot reach the vaultlet agent at {socket}: {}", connect_hint(.source)
    )]
    Connect {
        socket: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("INVALID_ARGUMENT: {0}")]
    InvalidRef(#[from] RefError),
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The agent sent something this client cannot use (a version mismatch).
    #[error("INTERNAL: unexpected answer from the agent: {0}")]
    Protocol(String),
}

impl Error {
    /// The gRPC status code this error stands for.
    pub fn code(&self) -> Code {
        match self {
            Error::Status { code, .. } => *code,
            Error::Connect { .. } => Code::Unavailable,
            Error::InvalidRef(_) => Code::InvalidArgument,
            Error::TokenFile { .. } => Code::Unauthenticated,
            Error::Protocol(_) => Code::Internal,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::Status { code: s.code(), message: s.message().to_owned() }
    }
}

/// What a failed connect means, from the OS error underneath.
fn connect_hint(e: &tonic::transport::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::NotFound => {
                    "no socket there: is the agent running on this node, and its directory mounted?".into()
                }
                std::io::ErrorKind::PermissionDenied => {
                    "permission denied: the socket is for the agent's group; run the pod with it (supplementalGroups)"
                        .into()
                }
                std::io::ErrorKind::ConnectionRefused => {
                    "nothing listens on it: the agent is stopped or restarting".into()
                }
                _ => io.to_string(),
            };
        }
        source = s.source();
    }
    format!("{e} (is the agent running, and is its socket mounted?)")
}

/// The canonical upper-case name of a status code (`NOT_FOUND`), as gRPC tools print it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
