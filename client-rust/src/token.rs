//! Where the client finds the caller's ServiceAccount token. Kubelet rotates the
//! projected token in place, so the file is checked on every call (and read
//! again whenever it changed).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretString};
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};

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

/// Where a request carries the token: `authorization: Bearer <token>`, which
/// every agent reads, or `vaultlet-token: <token>`, which agents that announce
/// `vaultlet-features: indexed-token` read too.
///
/// Why two: h2 never lets HPACK index `authorization` (its encoder skips the
/// header's value, whatever its sensitivity), so each call sends the whole
/// token (about 1 KB, Huffman-coded) and the agent decodes it again: about a
/// sixth of the agent's instructions for a cached read, measured with
/// `vaultlet-bench --only instructions`. Under another name h2 indexes it, so
/// each call after the first sends one byte and the agent decodes nothing.
/// Never indexing guards against compression oracles, where an attacker's
/// bytes share an HPACK context with a victim's secret; this connection joins
/// only this process and its node's agent (a Unix socket, no proxy between),
/// and both hold the token anyway.
pub const TOKEN_METADATA: &str = "vaultlet-token";
/// What an agent can do, announced on every response (comma-separated).
pub const FEATURES_METADATA: &str = "vaultlet-features";
/// The feature: the agent reads `vaultlet-token`.
pub const INDEXED_TOKEN: &str = "indexed-token";

/// The token's two header values, built once per version of the file.
#[derive(Clone)]
struct Values {
    bearer: MetadataValue<Ascii>,
    raw: MetadataValue<Ascii>,
}

/// The token header for the current token. A stat per call tells whether the
/// file changed; only then is it read again.
pub(crate) struct Bearer {
    source: TokenSource,
    cached: Mutex<Option<(Stamp, Values)>>,
    /// The agent announced `indexed-token`. Learnt from a response, forgotten
    /// on any failed call (the connection may now reach another agent, say
    /// an older one after a rollback), so a request never depends on it.
    indexed: AtomicBool,
}

impl Bearer {
    pub(crate) fn new(source: TokenSource) -> Bearer {
        Bearer { source, cached: Mutex::new(None), indexed: AtomicBool::new(false) }
    }

    /// Puts the current token, if any, into `metadata`.
    pub(crate) fn insert(&self, metadata: &mut MetadataMap) -> Result<(), Error> {
        let Some(values) = self.values()? else { return Ok(()) };
        if self.indexed.load(Ordering::Relaxed) {
            metadata.insert(TOKEN_METADATA, values.raw);
        } else {
            metadata.insert("authorization", values.bearer);
        }
        Ok(())
    }

    /// Learns from a response what the agent reads.
    pub(crate) fn learn(&self, response: &MetadataMap) {
        let announced = response
            .get(FEATURES_METADATA)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|f| f.trim() == INDEXED_TOKEN));
        self.indexed.store(announced, Ordering::Relaxed);
    }

    /// After a failed call: send `authorization` until an agent says otherwise.
    /// Returns whether the failed call had used `vaultlet-token`.
    pub(crate) fn forget(&self) -> bool {
        self.indexed.swap(false, Ordering::Relaxed)
    }

    fn values(&self) -> Result<Option<Values>, Error> {
        let TokenSource::File(path) = &self.source else { return Ok(None) };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::TokenFile { path: path.display().to_string(), source }),
        };
        let stamp = (meta.dev(), meta.ino(), meta.len(), meta.mtime(), meta.mtime_nsec());
        let mut cached = self.cached.lock().expect("token cache lock");
        if let Some((_, values)) = cached.as_ref().filter(|(s, _)| *s == stamp) {
            return Ok(Some(values.clone()));
        }
        let Some(token) = read_token_file(path)? else { return Ok(None) };
        let invalid = || Error::Status {
            code: tonic::Code::Unauthenticated,
            message: format!("the token file {} holds characters a token cannot contain", path.display()),
        };
        // Neither value is marked sensitive: see TOKEN_METADATA.
        let values = Values {
            bearer: MetadataValue::try_from(format!("Bearer {}", token.expose_secret())).map_err(|_| invalid())?,
            raw: MetadataValue::try_from(token.expose_secret()).map_err(|_| invalid())?,
        };
        *cached = Some((stamp, values.clone()));
        Ok(Some(values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(bearer: &Bearer) -> Option<(&'static str, String)> {
        let mut m = MetadataMap::new();
        bearer.insert(&mut m).unwrap();
        for name in ["authorization", TOKEN_METADATA] {
            if let Some(v) = m.get(name) {
                assert_eq!(m.len(), 1, "one token header");
                return Some((name, v.to_str().unwrap().to_owned()));
            }
        }
        None
    }

    #[test]
    fn the_token_is_read_again_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let bearer = Bearer::new(TokenSource::File(path.clone()));
        assert!(sent(&bearer).is_none(), "no file, no token");
        std::fs::write(&path, "first\n").unwrap();
        assert_eq!(sent(&bearer), Some(("authorization", "Bearer first".into())));
        // Kubelet's rotation: a new file renamed over the old one.
        let next = dir.path().join("token.new");
        std::fs::write(&next, "second").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(sent(&bearer), Some(("authorization", "Bearer second".into())));
        std::fs::write(&path, "  \n").unwrap();
        let mut m = MetadataMap::new();
        assert_eq!(bearer.insert(&mut m).unwrap_err().code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn the_indexed_header_is_used_only_while_the_agent_announces_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "tok").unwrap();
        let bearer = Bearer::new(TokenSource::File(path));
        let response = |features: Option<&'static str>| {
            let mut m = MetadataMap::new();
            if let Some(f) = features {
                m.insert(FEATURES_METADATA, MetadataValue::from_static(f));
            }
            m
        };
        bearer.learn(&response(Some("other, indexed-token")));
        assert_eq!(sent(&bearer), Some((TOKEN_METADATA, "tok".into())));
        // An agent that does not announce it (an older one after a rollback).
        bearer.learn(&response(None));
        assert_eq!(sent(&bearer), Some(("authorization", "Bearer tok".into())));
        bearer.learn(&response(Some("indexed-token")));
        assert!(bearer.forget(), "the failed call had used vaultlet-token");
        assert_eq!(sent(&bearer), Some(("authorization", "Bearer tok".into())));
        assert!(!bearer.forget());
    }
}
