//! Where the client finds the caller's ServiceAccount token. Kubelet rotates the
//! projected token in place, so it is read again on every call.

use std::path::{Path, PathBuf};

use secrecy::SecretString;
use secrecy::zeroize::Zeroize;

use crate::Error;

pub const TOKEN_FILE_ENV: &str = "VAULTLET_TOKEN_FILE";
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/vaultlet/token";

#[derive(Clone, Debug)]
pub enum TokenSource {
    /// Read this file on every call; send nothing when it does not exist
    /// (development mode needs no token).
    File(PathBuf),
    /// Never send a token.
    None,
}

impl TokenSource {
    /// `VAULTLET_TOKEN_FILE`, else the projected token's default path.
    pub fn from_env() -> Self {
        let path = std::env::var_os(TOKEN_FILE_ENV).map(PathBuf::from).unwrap_or_else(|| DEFAULT_TOKEN_FILE.into());
        TokenSource::File(path)
    }

    /// The current token, trimmed (token files often end with a newline).
    pub fn read(&self) -> Result<Option<SecretString>, Error> {
        match self {
            TokenSource::None => Ok(None),
            TokenSource::File(path) => read_token_file(path),
        }
    }
}

fn read_token_file(path: &Path) -> Result<Option<SecretString>, Error> {
    match std::fs::read_to_string(path) {
        Ok(mut text) => {
            let token = text.trim();
            if token.is_empty() {
                return Err(Error::Status {
                    code: tonic::Code::Unauthenticated,
                    message: format!("the token file {} is empty", path.display()),
                });
            }
            let token = SecretString::from(token);
            text.zeroize();
            Ok(Some(token))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::TokenFile { path: path.display().to_string(), source }),
    }
}
