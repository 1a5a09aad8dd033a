//! HTTP plumbing: bodies, query strings, media types, and JSON responses.

use std::collections::BTreeMap;
use std::convert::Infallible;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;

use super::error::ApiError;

pub type Body = BoxBody<Bytes, Infallible>;

/// The apiserver's limit on a request body (`MaxRequestBodyBytes`, 3 MiB).
const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

pub fn json<T: Serialize>(code: u16, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = Response::new(full(body));
            *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
            response.headers_mut().insert(CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            response
        }
        Err(e) => error(&ApiError::Internal(format!("could not encode the response: {e}"))),
    }
}

pub fn error(err: &ApiError) -> Response<Body> {
    let status = err.to_status();
    // A Status always encodes; fall back to plain text rather than recurse.
    let body = serde_json::to_vec(&status).unwrap_or_else(|_| err.to_string().into_bytes());
    let mut response = Response::new(full(body));
    *response.status_mut() = StatusCode::from_u16(err.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    // As the apiserver does: clients (kube-rs, client-go) wait this long before a retry.
    if let Some(seconds) = status.details.as_ref().and_then(|d| d.retry_after_seconds) {
        response.headers_mut().insert(RETRY_AFTER, http::HeaderValue::from(seconds));
    }
    response
}

/// Reads the whole body. Every request's body is read, even a DELETE's (kubectl sends
/// DeleteOptions there): an unread body would corrupt the next request on a kept-alive
/// connection.
pub async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    Limited::new(body, MAX_BODY_BYTES).collect().await.map(|c| c.to_bytes()).map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            ApiError::TooLarge(MAX_BODY_BYTES)
        } else {
            ApiError::BadRequest(format!("could not read the request body: {e}"))
        }
    })
}

/// The media type of a header value, lowercased, without parameters.
fn media_type(value: &str) -> String {
    value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

pub fn content_type(headers: &HeaderMap) -> Option<String> {
    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(media_type)
}

/// Requires a JSON body; protobuf (what typed kubectl commands send) and anything
/// else gets 415. A missing Content-Type is read as JSON.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    match content_type(headers).as_deref() {
        None | Some("application/json") => Ok(()),
        Some(_) => Err(ApiError::UnsupportedMediaType("application/json")),
    }
}

/// Parses a JSON body; an empty body is an empty object (`kubectl delete` may send none).
pub fn parse_json(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))
}

/// Accepts a request whose `Accept` allows plain JSON. Media types with parameters that
/// change the representation (`as=Table`, `as=APIGroupDiscoveryList`) are alternatives
/// the client offers alongside plain JSON, which is what it gets here.
pub fn check_accept(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(accept) = headers.get(ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let plain_json = accept.split(',').any(|item| {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let transformed = parts.any(|p| p.trim().starts_with("as="));
        !transformed && matches!(media.as_str(), "application/json" | "application/*" | "*/*")
    });
    if plain_json || accept.trim().is_empty() { Ok(()) } else { Err(ApiError::NotAcceptable) }
}

fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(byte.ok_or_else(|| ApiError::BadRequest(format!("invalid escape in query string: {s:?}")))?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ApiError::BadRequest(format!("query string is not UTF-8: {s:?}")))
}

/// Query parameters; the first value of a repeated one wins, as with Go's `url.Values.Get`.
#[derive(Debug, Default)]
pub struct Query(BTreeMap<String, String>);

impl Query {
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut map = BTreeMap::new();
        for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.entry(percent_decode(k)?).or_insert(percent_decode(v)?);
        }
        Ok(Self(map))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// A boolean parameter as Go's `strconv.ParseBool` reads it; absent is false.
    pub fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None => Ok(false),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("" | "0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(other) => Err(ApiError::BadRequest(format!("invalid boolean value for {key}: {other:?}"))),
        }
    }

    /// An unsigned integer parameter, such as `resourceVersion` or `timeoutSeconds`.
    pub fn number(&self, key: &str) -> Result<Option<u64>, ApiError> {
        match self.get(key).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::BadRequest(format!("invalid value for {key}: {v:?}: expected a non-negative integer"))
            }),
        }
    }

    /// `dryRun=All` (the only value the apiserver knows).
    pub fn dry_run(&self) -> Result<bool, ApiError> {
        match self.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => {
                Err(ApiError::BadRequest(format!("dryRun: Unsupported value: {other:?}: supported values: \"All\"")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = Query::parse(Some("labelSelector=app%3Dweb%2Ctier+in+(a)&watch=1&watch=0&x")).unwrap();
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(q.flag("watch").unwrap());
        assert_eq!(q.get("x"), Some(""));
        assert!(Query::parse(Some("a=%zz")).is_err());
        assert!(Query::parse(Some("a=%4")).is_err());
    }

    #[test]
    fn accept_negotiation() {
        let mut h = HeaderMap::new();
        let table = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
        h.insert(ACCEPT, table.parse().unwrap());
        assert!(check_accept(&h).is_ok());
        h.insert(ACCEPT, "application/json;as=Table;v=v1;g=meta.k8s.io".parse().unwrap());
        assert!(check_accept(&h).is_err());
        h.insert(ACCEPT, "application/vnd.kubernetes.protobuf".parse().unwrap());
        assert!(check_accept(&h).is_err());
        h.insert(ACCEPT, "application/vnd.kubernetes.protobuf,application/json".parse().unwrap());
        assert!(check_accept(&h).is_ok());
    }
}
