//! Token issuance: the TokenRequest subresource (`serviceaccounts/NAME/token`), the
//! library's minting (any lifetime, any issue time), and legacy Secret-based tokens.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestStatus};
use k8s_openapi::api::core::v1::{Node, Pod, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::clock;
use super::error::{ApiError, FieldError, GroupResource};
use super::ids;
use super::object::{Kind, Object, Stored, check_type_meta};
use super::rest;
use super::state::State;
use super::tokens::{BoundClaims, KubernetesClaims, LEGACY_ISSUER, LegacyClaims, ObjectRef};

const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

fn get<K: Stored>(state: &State, namespace: &str, name: &str) -> Result<K, ApiError> {
    state
        .store
        .get(K::STORED_KIND, namespace, name)
        .and_then(K::from_object)
        .ok_or_else(|| K::STORED_KIND.not_found(name))
}

fn reference(meta: &ObjectMeta) -> ObjectRef {
    ObjectRef { name: meta.name.clone().unwrap_or_default(), uid: meta.uid.clone().unwrap_or_default() }
}

fn signing_failed(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// What a new bound token is for.
pub struct Grant<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub bound: Option<&'a BoundObjectReference>,
    pub audiences: Vec<String>,
    pub issued_at: i64,
    pub expiration_seconds: i64,
}

/// Signs a bound token after the checks the TokenRequest REST handler makes on the
/// account and the bound object. Returns the token and its expiry (Unix seconds).
pub fn issue(state: &State, grant: &Grant<'_>) -> Result<(String, i64), ApiError> {
    let (namespace, name) = (grant.namespace, grant.service_account);
    let sa: ServiceAccount = get(state, namespace, name)?;
    let mut claims = KubernetesClaims {
        namespace: namespace.to_owned(),
        serviceaccount: reference(&sa.metadata),
        ..Default::default()
    };
    if let Some(bound) = grant.bound {
        let bound_name = bound.name.clone().unwrap_or_default();
        let mismatched_uid = |kind: &'static str, uid: &str, actual: &str| ApiError::Conflict {
            resource: GroupResource { group: "", resource: kind },
            name: bound_name.clone(),
            detail: format!(
                "the UID in the bound object reference ({uid}) does not match the UID in record ({actual}). The object might have been deleted and then recreated"
            ),
        };
        let wanted_uid = bound.uid.as_deref().filter(|u| !u.is_empty());
        match (bound.api_version.as_deref().unwrap_or("v1"), bound.kind.as_deref().unwrap_or_default()) {
            ("v1", "Pod") => {
                let pod: Pod = get(state, namespace, &bound_name)?;
                let pod_ref = reference(&pod.metadata);
                if let Some(uid) = wanted_uid.filter(|u| *u != pod_ref.uid) {
                    return Err(mismatched_uid("Pod", uid, &pod_ref.uid));
                }
                let spec = pod.spec.unwrap_or_default();
                if spec.service_account_name.as_deref() != Some(name) {
                    return Err(ApiError::BadRequest(format!(
                        "cannot bind token for serviceaccount {name:?} to pod running with different serviceaccount name."
                    )));
                }
                // Without a Node object the claim keeps the name alone, as a real server does.
                claims.node = spec.node_name.filter(|n| state.pod_node_info && !n.is_empty()).map(|node_name| {
                    match state.store.get(Kind::Node, "", &node_name).and_then(Node::from_object) {
                        Some(node) => reference(&node.metadata),
                        None => ObjectRef { name: node_name, uid: String::new() },
                    }
                });
                claims.pod = Some(pod_ref);
            }
            ("v1", "Secret") => {
                let secret: Secret = get(state, namespace, &bound_name)?;
                let secret_ref = reference(&secret.metadata);
                if let Some(uid) = wanted_uid.filter(|u| *u != secret_ref.uid) {
                    return Err(mismatched_uid("Secret", uid, &secret_ref.uid));
                }
                claims.secret = Some(secret_ref);
            }
            (version, kind) => {
                return Err(ApiError::BadRequest(format!(
                    "cannot bind token for serviceaccount {name:?} to object of type {version}, Kind={kind} (this test server binds to Pods and Secrets)"
                )));
            }
        }
    }
    let exp = grant.issued_at.saturating_add(grant.expiration_seconds);
    let bound = BoundClaims {
        iss: state.signer.issuer().to_owned(),
        sub: format!("system:serviceaccount:{namespace}:{name}"),
        aud: grant.audiences.clone(),
        exp,
        iat: grant.issued_at,
        nbf: grant.issued_at,
        jti: ids::uid(),
        kubernetes: claims,
    };
    Ok((state.signer.sign(&bound).map_err(signing_failed)?, exp))
}

fn invalid(causes: Vec<FieldError>) -> ApiError {
    ApiError::Invalid { kind: "TokenRequest", group: "authentication.k8s.io", name: String::new(), causes }
}

/// `POST /api/v1/namespaces/NS/serviceaccounts/NAME/token`.
pub fn handle(state: &State, namespace: &str, name: &str, body: Value) -> Result<TokenRequest, ApiError> {
    check_type_meta("authentication.k8s.io/v1", "TokenRequest", &body)?;
    let mut request: TokenRequest = serde_json::from_value(body).map_err(|e| {
        ApiError::BadRequest(format!("TokenRequest in version \"v1\" cannot be handled as a TokenRequest: {e}"))
    })?;
    let expiration = request.spec.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION_SECONDS);
    let min = i64::try_from(state.min_token_expiration.as_secs()).unwrap_or(i64::MAX);
    let field = "spec.expirationSeconds";
    if expiration < min {
        let shortest = if min % 60 == 0 { format!("{} minutes", min / 60) } else { format!("{min} seconds") };
        let detail = format!("may not specify a duration less than {shortest}");
        return Err(invalid(vec![FieldError::invalid(field, expiration.to_string(), detail)]));
    }
    if expiration > MAX_EXPIRATION_SECONDS {
        let detail = "may not specify a duration larger than 2^32 seconds";
        return Err(invalid(vec![FieldError::invalid(field, expiration.to_string(), detail)]));
    }
    if request.spec.audiences.is_empty() {
        request.spec.audiences.clone_from(&state.api_audiences);
    }
    let now = clock::now_seconds();
    let grant = Grant {
        namespace,
        service_account: name,
        bound: request.spec.bound_object_ref.as_ref(),
        audiences: request.spec.audiences.clone(),
        issued_at: now,
        expiration_seconds: expiration,
    };
    let (token, exp) = issue(state, &grant)?;
    request.spec.expiration_seconds = Some(expiration);
    request.metadata = ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        creation_timestamp: Some(clock::time(now)),
        ..Default::default()
    };
    let expiration_timestamp = clock::time(exp);
    request.status = Some(TokenRequestStatus { token, expiration_timestamp });
    Ok(request)
}

/// Mints a legacy token the way the old token controller did: a signed JWT without
/// audience or expiry, kept in a `kubernetes.io/service-account-token` Secret that it
/// is valid only as long as.
pub fn mint_legacy(state: &State, namespace: &str, name: &str) -> Result<String, ApiError> {
    let sa: ServiceAccount = get(state, namespace, name)?;
    let sa_uid = sa.metadata.uid.clone().unwrap_or_default();
    let secret_name = format!("{name}-token-{}", ids::name_suffix());
    let claims = LegacyClaims {
        iss: LEGACY_ISSUER.to_owned(),
        sub: format!("system:serviceaccount:{namespace}:{name}"),
        namespace: namespace.to_owned(),
        secret_name: secret_name.clone(),
        service_account_name: name.to_owned(),
        service_account_uid: sa_uid.clone(),
    };
    let token = state.signer.sign(&claims).map_err(signing_failed)?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name),
            namespace: Some(namespace.to_owned()),
            annotations: Some(BTreeMap::from([
                ("kubernetes.io/service-account.name".to_owned(), name.to_owned()),
                ("kubernetes.io/service-account.uid".to_owned(), sa_uid),
            ])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/service-account-token".to_owned()),
        data: Some(BTreeMap::from([
            ("token".to_owned(), ByteString(token.clone().into_bytes())),
            ("namespace".to_owned(), ByteString(namespace.as_bytes().to_vec())),
        ])),
        ..Default::default()
    };
    rest::create_object(state, Object::Secret(secret), false)?;
    Ok(token)
}
