//! Request routing: URL to resource and verb (the apiserver's `RequestInfo`), counting,
//! fault gates, authentication, then the handler.

use std::sync::Arc;
use std::time::Duration;

use http::header::AUTHORIZATION;
use http::{HeaderMap, Method, Request, Response};
use hyper::body::Incoming;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, Status, StatusDetails};
use serde::Serialize;

use super::discovery;
use super::error::ApiError;
use super::http::{self as h, Body, Query};
use super::object::{Kind, Object};
use super::patch::PatchType;
use super::rest;
use super::state::State;
use super::test_hooks;
use super::token_request;
use super::token_review;
use super::watch::{self, WatchParams};

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Version,
    Health,
    CoreVersions,
    CoreResources,
    Groups,
    AuthGroup,
    AuthResources,
    OpenIdConfiguration,
    Jwks,
    Collection { kind: Kind, namespace: Option<String> },
    Item { kind: Kind, namespace: String, name: String },
    Token { namespace: String, name: String },
    TokenReviews,
    TestHook(String),
    Unknown,
}

fn parse(path: &str) -> Route {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let kind = |plural: &str| Kind::from_plural(plural);
    match segments.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "livez" | "readyz"] => Route::Health,
        ["api"] => Route::CoreVersions,
        ["api", "v1"] => Route::CoreResources,
        ["apis"] => Route::Groups,
        ["apis", discovery::AUTH_GROUP] => Route::AuthGroup,
        ["apis", discovery::AUTH_GROUP, "v1"] => Route::AuthResources,
        ["apis", discovery::AUTH_GROUP, "v1", "tokenreviews"] => Route::TokenReviews,
        [".well-known", "openid-configuration"] => Route::OpenIdConfiguration,
        ["openid", "v1", "jwks"] => Route::Jwks,
        ["_test", rest @ ..] => Route::TestHook(rest.join("/")),
        ["api", "v1", plural] => match kind(plural) {
            Some(kind) => Route::Collection { kind, namespace: None },
            None => Route::Unknown,
        },
        ["api", "v1", plural, name] => match kind(plural) {
            Some(kind) if !kind.namespaced() => {
                Route::Item { kind, namespace: String::new(), name: (*name).to_owned() }
            }
            _ => Route::Unknown,
        },
        ["api", "v1", "namespaces", ns, plural] => match kind(plural) {
            Some(kind) if kind.namespaced() => Route::Collection { kind, namespace: Some((*ns).to_owned()) },
            _ => Route::Unknown,
        },
        ["api", "v1", "namespaces", ns, plural, name] => match kind(plural) {
            Some(kind) if kind.namespaced() => {
                Route::Item { kind, namespace: (*ns).to_owned(), name: (*name).to_owned() }
            }
            _ => Route::Unknown,
        },
        ["api", "v1", "namespaces", ns, "serviceaccounts", name, "token"] => {
            Route::Token { namespace: (*ns).to_owned(), name: (*name).to_owned() }
        }
        _ => Route::Unknown,
    }
}

/// The verb and resource the apiserver's audit log would name, for request counts.
fn verb_and_resource(route: &Route, method: &Method, watching: bool) -> (String, String) {
    let verb = match (method, route) {
        (&Method::GET, Route::Collection { .. }) if watching => "watch",
        (&Method::GET, Route::Collection { .. }) => "list",
        (&Method::GET, _) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, Route::Collection { .. }) => "deletecollection",
        (&Method::DELETE, _) => "delete",
        (other, _) => return (other.as_str().to_ascii_lowercase(), String::new()),
    };
    let resource = match route {
        Route::Collection { kind, .. } | Route::Item { kind, .. } => kind.plural().to_owned(),
        Route::Token { .. } => "serviceaccounts/token".to_owned(),
        Route::TokenReviews => "tokenreviews".to_owned(),
        _ => String::new(),
    };
    (verb.to_owned(), resource)
}

/// Who sent a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    Admin,
    ServiceAccount,
}

/// No credentials means the administrator: over plain http kubectl sends none (a real
/// apiserver would be HTTPS), and this server listens on loopback only for tests. A
/// bearer token must be the admin token or a ServiceAccount token valid for the API's
/// audiences; anything else is 401.
fn authenticate(state: &State, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(Caller::Admin);
    };
    let token =
        value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim).ok_or(ApiError::Unauthorized)?;
    if constant_time_eq(token.as_bytes(), state.admin_token.as_bytes()) {
        return Ok(Caller::Admin);
    }
    token_review::authenticate(state, token, &[]).map(|_| Caller::ServiceAccount).map_err(|reason| {
        tracing::info!(%reason, "bearer token refused: 401");
        ApiError::Unauthorized
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn ok<T: Serialize>(value: &T) -> Result<Response<Body>, ApiError> {
    Ok(h::json(200, value))
}

/// Serves one request; every failure becomes a `Status` response.
pub async fn handle(state: Arc<State>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = match serve(state, request).await {
        Ok(response) => response,
        Err(e) => h::error(&e),
    };
    tracing::debug!(%method, %path, status = response.status().as_u16(), "request");
    response
}

async fn serve(state: Arc<State>, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (parts, body) = request.into_parts();
    let route = parse(parts.uri.path());
    let query = Query::parse(parts.uri.query());
    let watching = query.as_ref().is_ok_and(|q| q.flag("watch").unwrap_or(false));
    let (verb, resource) = verb_and_resource(&route, &parts.method, watching);
    let counted = if resource.is_empty() { parts.uri.path() } else { resource.as_str() };
    state.requests.record(&verb, counted);
    let body = h::read_body(body).await?;
    let query = query?;
    if let Route::TestHook(hook) = &route {
        // Fault switches bypass the faults they control (a hung server must be releasable).
        return match authenticate(&state, &parts.headers)? {
            Caller::Admin => test_hooks::serve(&state, &parts.method, hook, &query),
            Caller::ServiceAccount => Err(ApiError::Forbidden("test hooks are for the administrator".to_owned())),
        };
    }
    state.faults.gate().await;
    authenticate(&state, &parts.headers)?;
    if route == Route::Unknown {
        return Err(ApiError::PathNotFound);
    }
    h::check_accept(&parts.headers)?;
    match (route, parts.method.clone()) {
        (Route::Version, Method::GET) => ok(&discovery::version()),
        (Route::Health, Method::GET) => Ok(Response::new(h::full("ok"))),
        (Route::CoreVersions, Method::GET) => ok(&discovery::core_versions(state.url.trim_start_matches("http://"))),
        (Route::CoreResources, Method::GET) => ok(&discovery::core_resources()),
        (Route::Groups, Method::GET) => ok(&discovery::groups()),
        (Route::AuthGroup, Method::GET) => ok(&discovery::group()),
        (Route::AuthResources, Method::GET) => ok(&discovery::auth_resources()),
        (Route::OpenIdConfiguration, Method::GET) => {
            ok(&discovery::openid_configuration(state.signer.issuer(), &state.url))
        }
        (Route::Jwks, Method::GET) => ok(&state.signer.jwks()),
        (Route::TokenReviews, Method::POST) => {
            h::require_json(&parts.headers)?;
            let review = token_review::review(&state, h::parse_json(&body)?)?;
            Ok(h::json(201, &review))
        }
        (Route::Token { namespace, name }, Method::POST) => {
            h::require_json(&parts.headers)?;
            let issued = token_request::handle(&state, &namespace, &name, h::parse_json(&body)?)?;
            Ok(h::json(201, &issued))
        }
        (Route::Collection { kind, namespace }, Method::GET) => {
            collection_get(state.clone(), kind, namespace.as_deref(), &query, watching)
        }
        (Route::Collection { kind, namespace }, Method::POST) => {
            let namespace = match (kind.namespaced(), namespace) {
                (true, Some(ns)) => ns,
                (false, None) => String::new(),
                _ => return Err(ApiError::MethodNotAllowed),
            };
            h::require_json(&parts.headers)?;
            let created = rest::create(&state, kind, &namespace, h::parse_json(&body)?, query.dry_run()?)?;
            Ok(h::json(201, &created))
        }
        (Route::Item { kind, namespace, name }, Method::GET) => ok(&rest::get(&state, kind, &namespace, &name)?),
        (Route::Item { kind, namespace, name }, Method::PUT) => {
            h::require_json(&parts.headers)?;
            let body = h::parse_json(&body)?;
            ok(&rest::update(&state, kind, &namespace, &name, body, query.dry_run()?)?)
        }
        (Route::Item { kind, namespace, name }, Method::PATCH) => {
            let media = h::content_type(&parts.headers).unwrap_or_default();
            let patch_type =
                PatchType::from_media_type(&media).ok_or(ApiError::UnsupportedMediaType(PatchType::ACCEPTED))?;
            ok(&rest::patch(&state, kind, &namespace, &name, patch_type, &body, query.dry_run()?)?)
        }
        (Route::Item { kind, namespace, name }, Method::DELETE) => {
            h::require_json(&parts.headers)?;
            let options = delete_options(&body, &query)?;
            let dry_run = query.dry_run()? || options.dry_run.as_ref().is_some_and(|d| d.iter().any(|v| v == "All"));
            let deleted = rest::delete(&state, kind, &namespace, &name, &options, dry_run)?;
            Ok(deleted_response(deleted))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// DeleteOptions from the body (kubectl, kube-rs) or the query string (curl users).
fn delete_options(body: &[u8], query: &Query) -> Result<DeleteOptions, ApiError> {
    let value = h::parse_json(body)?;
    let mut options: DeleteOptions = serde_json::from_value(value)
        .map_err(|e| ApiError::BadRequest(format!("DeleteOptions cannot be decoded: {e}")))?;
    if options.propagation_policy.is_none() {
        options.propagation_policy = query.get("propagationPolicy").map(str::to_owned);
    }
    Ok(options)
}

/// Pods and namespaces answer a delete with the object; other kinds with a success
/// Status naming it (their registries do not set `ReturnDeletedObject`).
fn deleted_response(deleted: Object) -> Response<Body> {
    if matches!(deleted.kind(), Kind::Pod | Kind::Namespace) {
        return h::json(200, &deleted);
    }
    let status = Status {
        status: Some("Success".to_owned()),
        details: Some(StatusDetails {
            name: Some(deleted.name().to_owned()),
            kind: Some(deleted.kind().plural().to_owned()),
            uid: Some(deleted.uid().to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    };
    h::json(200, &status)
}

fn collection_get(
    state: Arc<State>,
    kind: Kind,
    namespace: Option<&str>,
    query: &Query,
    watching: bool,
) -> Result<Response<Body>, ApiError> {
    let filter = rest::filter(kind, namespace, query.get("labelSelector"), query.get("fieldSelector"))?;
    let version = query.number("resourceVersion")?;
    if !watching {
        let exact = match query.get("resourceVersionMatch") {
            None | Some("" | "NotOlderThan") => false,
            Some("Exact") => true,
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                )));
            }
        };
        return Ok(h::json(200, &rest::list(&state, kind, &filter, version, exact)?));
    }
    if query.get("sendInitialEvents").is_some() {
        return Err(watch::refuse_send_initial_events());
    }
    let timeout = query.number("timeoutSeconds")?.map_or(watch::DEFAULT_TIMEOUT, Duration::from_secs);
    let params = WatchParams { from: watch::from(version), bookmarks: query.flag("allowWatchBookmarks")?, timeout };
    Ok(watch::respond(state, kind, filter, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_resources() {
        assert_eq!(parse("/api/v1/secrets"), Route::Collection { kind: Kind::Secret, namespace: None });
        assert_eq!(
            parse("/api/v1/namespaces/ns/secrets/s"),
            Route::Item { kind: Kind::Secret, namespace: "ns".into(), name: "s".into() }
        );
        assert_eq!(
            parse("/api/v1/namespaces/ns"),
            Route::Item { kind: Kind::Namespace, namespace: String::new(), name: "ns".into() }
        );
        assert_eq!(parse("/api/v1/secrets/s"), Route::Unknown);
        assert_eq!(parse("/api/v1/namespaces/ns/nodes"), Route::Unknown);
        assert_eq!(
            parse("/api/v1/namespaces/ns/serviceaccounts/sa/token"),
            Route::Token { namespace: "ns".into(), name: "sa".into() }
        );
        assert_eq!(parse("/apis/authentication.k8s.io/v1/tokenreviews"), Route::TokenReviews);
    }
}
