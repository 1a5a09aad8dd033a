//! The webhook's start-up errors; a review never fails, it answers (see `review`).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}: {1}")]
    Read(PathBuf, String),
    #[error("the serving certificate: {0}")]
    Rustls(#[source] rustls::Error),
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(String),
}

impl From<rcgen::Error> for TlsError {
    fn from(e: rcgen::Error) -> Self {
        TlsError::Generate(e.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {0}: {1}")]
    Listen(std::net::SocketAddr, #[source] std::io::Error),
}
