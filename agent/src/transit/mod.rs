//! Vault/OpenBao Transit, as the agent and its tools use it: Kubernetes-auth
//! login with short-lived tokens (one login in flight, again before expiry and
//! on a 403), batch decrypt with coalescing of identical requests, and the key
//! operations of `seal` and `recrypt`. Every call has a deadline.
//!
//! Ciphertexts are bound to a place: each carries the derivation context of the
//! Secret and data key it was sealed for, and Transit decrypts it under that
//! context only. That holds only for derived keys (Transit ignores the context
//! of any other key), so the first bound decrypt under a key also asks Transit
//! to decrypt under a context nobody uses: a key that accepts it is refused.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use secrecy::SecretString;
use vaultrs::client::{VaultClient, VaultClientSettings, VaultClientSettingsBuilder};
use zeroize::Zeroizing;

use crate::metrics::{Metrics, OperationLabels};

mod batch;
mod session;

use session::Session;

/// Where Vault/OpenBao is and how long a call may take.
#[derive(Clone, Debug)]
pub struct VaultSettings {
    pub addr: String,
    pub cacert: Option<PathBuf>,
    pub timeout: Duration,
}

/// How to obtain a Vault token.
pub enum VaultAuth {
    /// A token given by the operator (`VAULT_TOKEN`), for the command-line tools.
    Token(SecretString),
    /// The Kubernetes auth method: log in with a ServiceAccount JWT read from a file.
    Kubernetes { mount: String, role: String, jwt_file: PathBuf },
}

/// What went wrong, without the request that failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ErrorKind {
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("login failed: {0}")]
    Login(String),
    #[error("permission denied: {0}")]
    Denied(String),
    #[error("refused: {0}")]
    Rejected(String),
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

/// A failed Transit operation, naming the backend so an operator knows where to look.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op} at Vault/OpenBao {addr}: {kind}")]
pub struct TransitError {
    pub op: &'static str,
    pub addr: Arc<str>,
    pub kind: ErrorKind,
}

impl TransitError {
    /// True when retrying later may succeed (the backend is down or slow).
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, ErrorKind::Unavailable(_) | ErrorKind::Timeout(_) | ErrorKind::Login(_))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid Vault address {0:?}: expected http(s)://HOST[:PORT]")]
    Address(String),
    #[error("Vault client: {0}")]
    Client(String),
}

/// Plaintext shared by every caller waiting for the same ciphertext.
pub type Plaintext = Arc<Zeroizing<Vec<u8>>>;
/// One ciphertext's outcome: plaintext, or Transit's reason to refuse it.
pub type Decrypted = Result<Plaintext, String>;
type SharedItem = Shared<BoxFuture<'static, Result<Decrypted, TransitError>>>;

/// A ciphertext and the derivation context of the place it is bound to
/// (`None`: a legacy ciphertext bound to no place).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sealed {
    pub ciphertext: String,
    pub context: Option<String>,
}

impl Sealed {
    pub fn bound(ciphertext: impl Into<String>, context: impl Into<String>) -> Sealed {
        Sealed { ciphertext: ciphertext.into(), context: Some(context.into()) }
    }

    pub fn unbound(ciphertext: impl Into<String>) -> Sealed {
        Sealed { ciphertext: ciphertext.into(), context: None }
    }
}

/// A context no Secret has (places are `vaultlet/v1/...`): a key that decrypts
/// under it ignores contexts, so it binds nothing.
const PROBE_CONTEXT: &str = "vaultlet/probe/no-place";

/// The latest and the lowest decryptable versions of a key, and whether it
/// derives a key per context (only then are ciphertexts bound to their place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyInfo {
    pub latest_version: u32,
    pub min_decryption_version: u32,
    pub derived: bool,
}

pub struct Transit {
    http: reqwest::Client,
    settings: VaultClientSettings,
    addr: Arc<str>,
    mount: String,
    auth: VaultAuth,
    timeout: Duration,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    /// Decrypts in flight, by key and item (context included: the same
    /// ciphertext under another context is another request), tagged with their batch.
    inflight: Mutex<HashMap<(String, Sealed), (u64, SharedItem)>>,
    batches: AtomicU64,
    /// Keys a probe showed to be derived (a key cannot stop being derived).
    derived: Arc<Mutex<HashSet<String>>>,
    metrics: Arc<Metrics>,
    /// The outcome of the last call as far as reachability goes, for readiness.
    health: Mutex<Result<(), String>>,
}

impl Transit {
    pub fn new(
        settings: VaultSettings,
        auth: VaultAuth,
        mount: String,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Transit>, ConfigError> {
        // vaultrs panics on an address it cannot parse: check first.
        match url::Url::parse(&settings.addr) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => return Err(ConfigError::Address(settings.addr)),
        }
        let mut builder = VaultClientSettingsBuilder::default();
        builder
            .address(&settings.addr)
            .token("")
            .timeout(Some(settings.timeout))
            .ca_certs(settings.cacert.iter().map(|p| p.display().to_string()).collect());
        let vault_settings = builder.build().map_err(|e| ConfigError::Client(e.to_string()))?;
        let client = VaultClient::new(vault_settings.clone()).map_err(|e| ConfigError::Client(e.to_string()))?;
        Ok(Arc::new(Transit {
            http: client.http.http.clone(),
            settings: vault_settings,
            addr: settings.addr.trim_end_matches('/').into(),
            mount: mount.trim_matches('/').to_owned(),
            auth,
            timeout: settings.timeout,
            session: tokio::sync::Mutex::new(None),
            inflight: Mutex::new(HashMap::new()),
            batches: AtomicU64::new(0),
            derived: Arc::default(),
            metrics,
            health: Mutex::new(Err("not logged in yet".into())),
        }))
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Logs in if there is no fresh token (used for readiness).
    pub async fn check(&self) -> Result<(), TransitError> {
        self.run("login", |_| async { Ok(()) }).await
    }

    /// Decrypts `items` (all under `key`) in one batch call, joining any
    /// decrypt of the same item already in flight. A bound item decrypts only
    /// under a derived key (see the module comment).
    pub async fn decrypt(self: &Arc<Self>, key: &str, items: &[Sealed]) -> Result<Vec<Decrypted>, TransitError> {
        let waits: Vec<SharedItem> = {
            let mut inflight = self.inflight.lock().expect("inflight lock");
            let mut waits: Vec<Option<SharedItem>> =
                items.iter().map(|i| inflight.get(&(key.to_owned(), i.clone())).map(|(_, f)| f.clone())).collect();
            let missing: Vec<usize> = (0..items.len()).filter(|&i| waits[i].is_none()).collect();
            if !missing.is_empty() {
                let batch_id = self.batches.fetch_add(1, Ordering::Relaxed);
                let mut batch: Vec<Sealed> = missing.iter().map(|&i| items[i].clone()).collect();
                let probe = self.probe_for(key, &batch);
                batch.extend(probe);
                let (this, owned_key) = (self.clone(), key.to_owned());
                let call = async move {
                    let result = this.decrypt_now(&owned_key, batch).await.map(Arc::new);
                    this.inflight.lock().expect("inflight lock").retain(|_, (b, _)| *b != batch_id);
                    result
                }
                .boxed()
                .shared();
                for (j, &i) in missing.iter().enumerate() {
                    let item = call.clone().map(move |r| r.map(|all| all[j].clone())).boxed().shared();
                    inflight.insert((key.to_owned(), items[i].clone()), (batch_id, item.clone()));
                    waits[i] = Some(item);
                }
            }
            waits.into_iter().flatten().collect()
        };
        futures::future::join_all(waits).await.into_iter().collect()
    }

    /// The probe item a batch under `key` needs: none once the key is known to
    /// be derived, or when the batch binds nothing.
    fn probe_for(&self, key: &str, batch: &[Sealed]) -> Option<Sealed> {
        if self.derived.lock().expect("derived lock").contains(key) {
            return None;
        }
        let bound = batch.iter().find(|i| i.context.is_some())?;
        Some(Sealed::bound(bound.ciphertext.clone(), PROBE_CONTEXT))
    }

    /// One batch call; when the batch ends with a probe, its outcome decides
    /// whether the bound items' plaintext may be used.
    async fn decrypt_now(&self, key: &str, batch: Vec<Sealed>) -> Result<Vec<Decrypted>, TransitError> {
        let probed = batch.last().is_some_and(|i| i.context.as_deref() == Some(PROBE_CONTEXT));
        self.metrics.transit_decrypt_calls.inc();
        self.metrics.transit_decrypted_items.inc_by(batch.len() as u64);
        let url = self.url("decrypt", key);
        let mut results: Vec<Decrypted> = self
            .run("decrypt", |s| batch::decrypt(&self.http, s, url.clone(), &batch))
            .await?
            .into_iter()
            .map(|r| r.map(Arc::new))
            .collect();
        if !probed {
            return Ok(results);
        }
        // Dropping the probe's plaintext (if any) zeroizes it.
        if results.pop().is_some_and(|probe| probe.is_err()) {
            self.derived.lock().expect("derived lock").insert(key.to_owned());
            return Ok(results);
        }
        let refusal = format!(
            "Transit key {key:?} is not derived, so it cannot bind a ciphertext to its Secret; \
             move the Secret to a derived key with `vaultlet recrypt --bind`"
        );
        Ok(results
            .into_iter()
            .zip(&batch)
            .map(|(r, item)| if item.context.is_some() { Err(refusal.clone()) } else { r })
            .collect())
    }

    /// Re-encrypts with the key's latest version, each item under its own
    /// context; plaintext never leaves Transit.
    pub async fn rewrap(&self, key: &str, items: &[Sealed]) -> Result<Vec<Result<String, String>>, TransitError> {
        let url = self.url("rewrap", key);
        self.run("rewrap", |s| batch::rewrap(&self.http, s, url.clone(), items)).await
    }

    /// Encrypts `plaintext` under `key`, bound to `context` when given.
    pub async fn encrypt(&self, key: &str, plaintext: &[u8], context: Option<&str>) -> Result<String, TransitError> {
        let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(plaintext));
        let encoded = encoded.as_str();
        let context = context.map(|c| base64::engine::general_purpose::STANDARD.encode(c));
        self.run("encrypt", |s| {
            let context = context.clone();
            async move {
                let mut opts = vaultrs::api::transit::requests::EncryptDataRequest::builder();
                if let Some(c) = context {
                    opts.context(c);
                }
                vaultrs::transit::data::encrypt(&*s, &self.mount, key, encoded, Some(&mut opts))
                    .await
                    .map(|r| r.ciphertext)
                    .map_err(classify)
            }
        })
        .await
    }

    /// Creates `key` as a derived key (one key per context: what binds a
    /// ciphertext to its place).
    pub async fn create_derived_key(&self, key: &str) -> Result<(), TransitError> {
        self.run("create key", |s| async move {
            let mut opts = vaultrs::api::transit::requests::CreateKeyRequest::builder();
            opts.derived(true);
            vaultrs::transit::key::create(&*s, &self.mount, key, Some(&mut opts)).await.map_err(classify)
        })
        .await
    }

    /// The key's information, or `None` when there is no such key.
    pub async fn key_info_opt(&self, key: &str) -> Result<Option<KeyInfo>, TransitError> {
        match self.key_info(key).await {
            Ok(info) => Ok(Some(info)),
            Err(TransitError { kind: ErrorKind::Rejected(r), .. }) if r.starts_with("HTTP 404") => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn rotate(&self, key: &str) -> Result<(), TransitError> {
        self.run("rotate key", |s| async move {
            vaultrs::transit::key::rotate(&*s, &self.mount, key).await.map_err(classify)
        })
        .await
    }

    pub async fn key_info(&self, key: &str) -> Result<KeyInfo, TransitError> {
        self.run("read key", |s| async move {
            let k = vaultrs::transit::key::read(&*s, &self.mount, key).await.map_err(classify)?;
            let latest = match &k.keys {
                vaultrs::api::transit::responses::ReadKeyData::Symmetric(m) => {
                    m.keys().filter_map(|v| v.parse().ok()).max()
                }
                vaultrs::api::transit::responses::ReadKeyData::Asymmetric(m) => {
                    m.keys().filter_map(|v| v.parse().ok()).max()
                }
            };
            Ok(KeyInfo {
                latest_version: latest.ok_or_else(|| ErrorKind::Protocol(format!("key {key} lists no versions")))?,
                min_decryption_version: k.min_decryption_version as u32,
                derived: k.derived,
            })
        })
        .await
    }

    /// Makes versions below `version` undecryptable (after every ciphertext moved on).
    pub async fn set_min_decryption_version(&self, key: &str, version: u32) -> Result<(), TransitError> {
        self.run("configure key", |s| async move {
            let mut opts = vaultrs::api::transit::requests::UpdateKeyConfigurationRequest::builder();
            opts.min_decryption_version(u64::from(version));
            vaultrs::transit::key::update(&*s, &self.mount, key, Some(&mut opts)).await.map_err(classify)
        })
        .await
    }

    fn url(&self, op: &str, key: &str) -> String {
        format!("{}/v1/{}/{op}/{}", self.addr, self.mount, url_path_segment(key))
    }

    /// Runs `op` with a session under the deadline; on a 403 logs in again once
    /// (the token may have been revoked or expired early) and retries.
    async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, TransitError>
    where
        F: Fn(Arc<Session>) -> Fut,
        Fut: Future<Output = Result<T, ErrorKind>>,
    {
        let started = Instant::now();
        let attempt = async {
            let session = self.session().await?;
            match f(session.clone()).await {
                Err(ErrorKind::Denied(_)) if matches!(self.auth, VaultAuth::Kubernetes { .. }) => {
                    self.forget(&session).await;
                    f(self.session().await?).await
                }
                other => other,
            }
        };
        let result = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(ErrorKind::Timeout(self.timeout)),
        };
        let operation = OperationLabels { operation: op };
        self.metrics.latency.transit.get_or_create(&operation).observe(started.elapsed().as_secs_f64());
        let result = result.map_err(|kind| {
            self.metrics.transit_errors.inc();
            TransitError { op, addr: self.addr.clone(), kind }
        });
        match &result {
            Ok(_) => *self.health.lock().expect("health lock") = Ok(()),
            Err(e) if e.is_transient() => *self.health.lock().expect("health lock") = Err(e.to_string()),
            Err(_) => {}
        }
        result
    }

    /// Whether the last call reached Vault/OpenBao (and why not).
    pub fn health(&self) -> Result<(), String> {
        self.health.lock().expect("health lock").clone()
    }

    /// The current session, logging in when there is none or it nears expiry.
    /// The lock makes concurrent callers share one login.
    async fn session(&self) -> Result<Arc<Session>, ErrorKind> {
        let mut current = self.session.lock().await;
        if let Some(s) = current.as_ref().filter(|s| s.is_fresh()) {
            return Ok(s.clone());
        }
        let s = Arc::new(self.login().await?);
        *current = Some(s.clone());
        Ok(s)
    }

    async fn forget(&self, stale: &Arc<Session>) {
        let mut current = self.session.lock().await;
        if current.as_ref().is_some_and(|s| Arc::ptr_eq(s, stale)) {
            *current = None;
        }
    }

    async fn login(&self) -> Result<Session, ErrorKind> {
        let (mount, role, jwt_file) = match &self.auth {
            VaultAuth::Token(t) => return Ok(Session::new(&self.http, &self.settings, t.clone(), None)),
            VaultAuth::Kubernetes { mount, role, jwt_file } => (mount, role, jwt_file),
        };
        let jwt = Zeroizing::new(
            std::fs::read_to_string(jwt_file)
                .map_err(|e| ErrorKind::Login(format!("cannot read the JWT file {}: {e}", jwt_file.display())))?,
        );
        let anonymous = Session::new(&self.http, &self.settings, SecretString::from(""), None);
        let started = Instant::now();
        let auth =
            vaultrs::auth::kubernetes::login(&anonymous, mount, role, jwt.trim()).await.map_err(
                |e| match classify(e) {
                    ErrorKind::Denied(d) | ErrorKind::Rejected(d) => {
                        ErrorKind::Login(format!("Kubernetes auth at auth/{mount} with role {role:?} refused: {d}"))
                    }
                    other => other,
                },
            )?;
        self.metrics.vault_logins.inc();
        // Renew at three quarters of the TTL, so no call starts with a token about to expire.
        let renew_at =
            (auth.lease_duration > 0).then(|| started + Duration::from_secs(auth.lease_duration).mul_f64(0.75));
        tracing::debug!(ttl_s = auth.lease_duration, "logged in to Vault/OpenBao");
        Ok(Session::new(&self.http, &self.settings, SecretString::from(auth.client_token), renew_at))
    }
}

/// Maps a vaultrs error to what it means for us (its messages never hold secrets;
/// Vault's own error strings are kept, they name the problem).
fn classify(e: vaultrs::error::ClientError) -> ErrorKind {
    use vaultrs::error::ClientError as E;
    match e {
        E::APIError { code: 403, errors } => ErrorKind::Denied(errors.join("; ")),
        E::APIError { code, errors } if code >= 500 || code == 429 => {
            ErrorKind::Unavailable(format!("HTTP {code}: {}", errors.join("; ")))
        }
        E::APIError { code, errors } => ErrorKind::Rejected(format!("HTTP {code}: {}", errors.join("; "))),
        E::RestClientError { source } => match source {
            rustify::errors::ClientError::ServerResponseError { code: 403, .. } => {
                ErrorKind::Denied("permission denied".into())
            }
            rustify::errors::ClientError::ServerResponseError { code, .. } if code < 500 => {
                ErrorKind::Rejected(format!("HTTP {code}"))
            }
            rustify::errors::ClientError::ServerResponseError { code, .. } => {
                ErrorKind::Unavailable(format!("HTTP {code}"))
            }
            other => ErrorKind::Unavailable(error_chain(&other)),
        },
        other => ErrorKind::Protocol(other.to_string()),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// Key names come from annotations: keep them to one path segment.
fn url_path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The key version of a Transit ciphertext (`vault:v3:...` is 3).
pub fn key_version(ciphertext: &str) -> Option<u32> {
    let rest = ciphertext.strip_prefix("vault:v")?;
    let (version, body) = rest.split_once(':')?;
    if body.is_empty() {
        return None;
    }
    version.parse().ok().filter(|v| *v > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_versions_come_from_the_prefix() {
        assert_eq!(key_version("vault:v1:abc"), Some(1));
        assert_eq!(key_version("vault:v42:abc=="), Some(42));
        for bad in ["vault:v0:abc", "vault:vx:abc", "vault:v1:", "v1:abc", "plain", ""] {
            assert_eq!(key_version(bad), None, "{bad}");
        }
    }

    #[test]
    fn key_names_stay_one_path_segment() {
        assert_eq!(url_path_segment("app-key_1.v2"), "app-key_1.v2");
        assert_eq!(url_path_segment("../sys/seal"), "..%2Fsys%2Fseal");
    }

    #[test]
    fn bad_addresses_are_refused_before_vaultrs_sees_them() {
        let settings = |addr: &str| VaultSettings { addr: addr.into(), cacert: None, timeout: Duration::from_secs(1) };
        for bad in ["", "localhost:8200", "ftp://x", "http://"] {
            let r = Transit::new(
                settings(bad),
                VaultAuth::Token(SecretString::from("t")),
                "transit".into(),
                Default::default(),
            );
            assert!(matches!(r, Err(ConfigError::Address(_))), "{bad}");
        }
    }
}
