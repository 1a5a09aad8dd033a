//! Where the client finds the caller's ServiceAccount token. Kubelet rotates the
//! projected token in place, so the file is checked on every call (and read
//! again whenever it changed).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretString};
use tonic::metadata::{Ascii, MetadataValue};

use crate::Error;

pub const TOKEN_FILE_ENV: &str = "VAULTLET_TOKEN_FILE";
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/vaultlet/token";

#[derive(Clone, Debug)]
pub enum TokenSource {
    /// Checked on every call and read again when it changed; nothing is sent
    /// while it does not exist (development mode needs no token).
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

/// Identifies one version of the token file: kubelet's rotation (a new file
/// swapped in) or an in-place write changes it.
type Stamp = (u64, u64, u64, i64, i64);

/// The `authorization` value for the current token. A stat per call tells
/// whether the file changed; only then is it read again.
pub(crate) struct Bearer {
    source: TokenSource,
    cached: Mutex<Option<(Stamp, MetadataValue<Ascii>)>>,
}

impl Bearer {
    pub(crate) fn new(source: TokenSource) -> Bearer {
        Bearer { source, cached: Mutex::new(None) }
    }

    pub(crate) fn header(&self) -> Result<Option<MetadataValue<Ascii>>, Error> {
        let TokenSource::File(path) = &self.source else { return Ok(None) };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::TokenFile { path: path.display().to_string(), source }),
        };
        let stamp = (meta.dev(), meta.ino(), meta.len(), meta.mtime(), meta.mtime_nsec());
        let mut cached = self.cached.lock().expect("token cache lock");
        if let Some((_, value)) = cached.as_ref().filter(|(s, _)| *s == stamp) {
            return Ok(Some(value.clone()));
        }
        let Some(token) = read_token_file(path)? else { return Ok(None) };
        let value =
            MetadataValue::try_from(format!("Bearer {}", token.expose_secret())).map_err(|_| Error::Status {
                code: tonic::Code::Unauthenticated,
                message: format!("the token file {} holds characters a token cannot contain", path.display()),
            })?;
        // Not marked sensitive: HPACK then indexes the header, so each call
        // after the first sends one byte instead of the whole token (and the
        // agent decodes nothing). Sensitivity guards against compression
        // oracles across a shared connection; this one joins only this process
        // and the agent, which both hold the token anyway.
        *cached = Some((stamp, value.clone()));
        Ok(Some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_again_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let bearer = Bearer::new(TokenSource::File(path.clone()));
        assert!(bearer.header().unwrap().is_none(), "no file, no token");
        std::fs::write(&path, "first\n").unwrap();
        assert_eq!(bearer.header().unwrap().unwrap().to_str().unwrap(), "Bearer first");
        // Kubelet's rotation: a new file renamed over the old one.
        let next = dir.path().join("token.new");
        std::fs::write(&next, "second").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(bearer.header().unwrap().unwrap().to_str().unwrap(), "Bearer second");
        std::fs::write(&path, "  \n").unwrap();
        assert_eq!(bearer.header().unwrap_err().code(), tonic::Code::Unauthenticated);
    }
}
