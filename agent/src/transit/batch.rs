//! Transit batch endpoints (`decrypt` and `rewrap` with `batch_input`), which
//! vaultrs does not offer. Called with the same reqwest client and token as
//! vaultrs's own calls; plaintext is decoded into zeroizing buffers. Each item
//! carries the derivation context of the place its ciphertext is bound to.

use std::sync::Arc;

use base64::Engine;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::session::Session;
use super::{ErrorKind, Sealed};

#[derive(Serialize)]
struct BatchRequest<'a> {
    batch_input: Vec<Item<'a>>,
    /// A batch where only some items fail is still an answer, not an error.
    partial_failure_response_code: u16,
}

#[derive(Serialize)]
struct Item<'a> {
    ciphertext: &'a str,
    /// Base64 of the context; absent for a ciphertext bound to no place.
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<String>,
}

#[derive(Deserialize)]
struct Envelope<T> {
    data: Option<BatchResults<T>>,
    #[serde(default)]
    errors: Vec<String>,
}

#[derive(Deserialize)]
struct BatchResults<T> {
    batch_results: Vec<T>,
}

#[derive(Deserialize)]
struct DecryptResult {
    #[serde(default)]
    plaintext: Zeroizing<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct RewrapResult {
    #[serde(default)]
    ciphertext: String,
    error: Option<String>,
}

/// One item's outcome: its value, or Transit's reason for refusing it.
pub type ItemResult<T> = Result<T, String>;

pub async fn decrypt(
    http: &reqwest::Client,
    session: Arc<Session>,
    url: String,
    items: &[Sealed],
) -> Result<Vec<ItemResult<Zeroizing<Vec<u8>>>>, ErrorKind> {
    let results: Vec<DecryptResult> = call(http, &session, url, items).await?;
    Ok(results
        .into_iter()
        .map(|r| match r.error.filter(|e| !e.is_empty()) {
            Some(e) => Err(e),
            None => {
                let mut out = Zeroizing::new(Vec::new());
                base64::engine::general_purpose::STANDARD
                    .decode_vec(r.plaintext.as_bytes(), &mut out)
                    .map_err(|_| "Transit returned plaintext that is not base64".to_owned())?;
                Ok(out)
            }
        })
        .collect())
}

pub async fn rewrap(
    http: &reqwest::Client,
    session: Arc<Session>,
    url: String,
    items: &[Sealed],
) -> Result<Vec<ItemResult<String>>, ErrorKind> {
    let results: Vec<RewrapResult> = call(http, &session, url, items).await?;
    Ok(results
        .into_iter()
        .map(|r| match r.error.filter(|e| !e.is_empty()) {
            Some(e) => Err(e),
            None => Ok(r.ciphertext),
        })
        .collect())
}

async fn call<T: for<'de> Deserialize<'de>>(
    http: &reqwest::Client,
    session: &Session,
    url: String,
    items: &[Sealed],
) -> Result<Vec<T>, ErrorKind> {
    let b64 = |c: &str| base64::engine::general_purpose::STANDARD.encode(c);
    let body = BatchRequest {
        batch_input: items
            .iter()
            .map(|i| Item { ciphertext: &i.ciphertext, context: i.context.as_deref().map(b64) })
            .collect(),
        partial_failure_response_code: 200,
    };
    let body = serde_json::to_vec(&body).map_err(|e| ErrorKind::Protocol(e.to_string()))?;
    let mut token = reqwest::header::HeaderValue::from_str(session.token().expose_secret())
        .map_err(|_| ErrorKind::Protocol("the Vault token is not a valid header value".into()))?;
    token.set_sensitive(true);
    let resp = http
        .post(url)
        .header("X-Vault-Token", token)
        .header("X-Vault-Request", "true")
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| ErrorKind::Unavailable(without_url(&e)))?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|e| ErrorKind::Unavailable(without_url(&e)))?;
    let envelope: Option<Envelope<T>> = serde_json::from_slice(&bytes).ok();
    match (status, envelope) {
        (200, Some(Envelope { data: Some(d), .. })) => check_len(d.batch_results, items.len()),
        // Every item failed: still a 400 with per-item reasons.
        (400, Some(Envelope { data: Some(d), .. })) => check_len(d.batch_results, items.len()),
        (403, _) => Err(ErrorKind::Denied("permission denied".into())),
        (400 | 404, Some(e)) => Err(ErrorKind::Rejected(e.errors.join("; "))),
        (s, e) if s >= 500 || s == 429 => Err(ErrorKind::Unavailable(format!(
            "HTTP {s}{}",
            e.map(|e| format!(": {}", e.errors.join("; "))).unwrap_or_default()
        ))),
        (s, _) => Err(ErrorKind::Protocol(format!("unexpected HTTP {s} from Transit"))),
    }
}

fn check_len<T>(results: Vec<T>, want: usize) -> Result<Vec<T>, ErrorKind> {
    if results.len() == want {
        Ok(results)
    } else {
        Err(ErrorKind::Protocol(format!("asked for {want} batch items, got {}", results.len())))
    }
}

/// reqwest's errors carry the URL; ours name the backend once, elsewhere.
fn without_url(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_owned();
    }
    let kind = if e.is_connect() { "connection failed" } else { "request failed" };
    let mut detail = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() { kind.to_owned() } else { format!("{kind}: {detail}") }
}
