//! ServiceAccount token authentication, as kube-apiserver's JWT authenticator and its
//! validators do it (`pkg/serviceaccount`), used both for TokenReview and for bearer
//! tokens on requests to this server.

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus, UserInfo};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::clock;
use super::error::ApiError;
use super::object::{Kind, Stored, check_type_meta};
use super::state::State;
use super::tokens::{BoundClaims, LegacyClaims, Verified};

/// go-jose's `DefaultLeeway`, which the apiserver applies to exp, nbf and iat.
const LEEWAY_SECONDS: i64 = 60;

const PREFIX: &str = "system:serviceaccount:";

/// The extra keys the apiserver puts on a ServiceAccount user.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
pub const EXTRA_NODE_UID: &str = "authentication.kubernetes.io/node-uid";
pub const EXTRA_CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";

/// A token that authenticated: who, and for which of the requested audiences.
pub struct Authenticated {
    pub user: UserInfo,
    pub audiences: Vec<String>,
}

fn get<K: Stored>(state: &State, namespace: &str, name: &str) -> Option<K> {
    state.store.get(K::STORED_KIND, namespace, name).and_then(K::from_object)
}

fn uid_of<K: k8s_openapi::Metadata<Ty = ObjectMeta>>(object: &K) -> &str {
    object.metadata().uid.as_deref().unwrap_or_default()
}

/// Go's `%q` of a string slice: `["a" "b"]`, as the apiserver's messages print audiences.
fn go_quoted(values: &[String]) -> String {
    format!("[{}]", values.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(" "))
}

fn service_account_user(namespace: &str, name: &str, uid: &str, extra: BTreeMap<String, Vec<String>>) -> UserInfo {
    UserInfo {
        username: Some(format!("{PREFIX}{namespace}:{name}")),
        uid: Some(uid.to_owned()),
        groups: Some(vec![
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated".to_owned(),
        ]),
        extra: (!extra.is_empty()).then_some(extra),
    }
}

/// Authenticates `token` for `requested` audiences (empty: the API's own audiences).
pub fn authenticate(state: &State, token: &str, requested: &[String]) -> Result<Authenticated, String> {
    let requested = if requested.is_empty() { state.api_audiences.as_slice() } else { requested };
    match state.signer.verify(token)? {
        Verified::Bound(claims) => authenticate_bound(state, &claims, requested),
        Verified::Legacy(claims) => authenticate_legacy(state, token, &claims, requested),
    }
}

fn intersect(token_audiences: &[String], requested: &[String]) -> Result<Vec<String>, String> {
    let both: Vec<String> = requested.iter().filter(|a| token_audiences.contains(a)).cloned().collect();
    if both.is_empty() {
        return Err(format!(
            "token audiences {} is invalid for the target audiences {}",
            go_quoted(token_audiences),
            go_quoted(requested)
        ));
    }
    Ok(both)
}

fn authenticate_bound(state: &State, claims: &BoundClaims, requested: &[String]) -> Result<Authenticated, String> {
    let audiences = intersect(&claims.aud, requested)?;
    let now = clock::now_seconds();
    if now > claims.exp.saturating_add(LEEWAY_SECONDS) {
        return Err("service account token has expired".to_owned());
    }
    if now + LEEWAY_SECONDS < claims.nbf {
        return Err("service account token is not valid yet".to_owned());
    }
    if now + LEEWAY_SECONDS < claims.iat {
        return Err("service account token claims could not be validated due to unexpected validation error".to_owned());
    }
    let k = &claims.kubernetes;
    let namespace = k.namespace.as_str();
    let sa_ref = &k.serviceaccount;
    let sa: ServiceAccount =
        get(state, namespace, &sa_ref.name).ok_or_else(|| Kind::ServiceAccount.not_found(&sa_ref.name).to_string())?;
    if uid_of(&sa) != sa_ref.uid {
        return Err(format!("service account UID ({}) does not match claim ({})", uid_of(&sa), sa_ref.uid));
    }
    let invalidated = || "service account token has been invalidated".to_owned();
    if let Some(secret_ref) = &k.secret {
        let secret: Secret = get(state, namespace, &secret_ref.name).ok_or_else(invalidated)?;
        if uid_of(&secret) != secret_ref.uid {
            return Err(format!(
                "secret UID ({}) does not match service account secret ref claim ({})",
                uid_of(&secret),
                secret_ref.uid
            ));
        }
    }
    let mut extra = BTreeMap::new();
    if let Some(pod_ref) = &k.pod {
        let pod: Pod = get(state, namespace, &pod_ref.name).ok_or_else(invalidated)?;
        if uid_of(&pod) != pod_ref.uid {
            return Err(format!(
                "pod UID ({}) does not match service account pod ref claim ({})",
                uid_of(&pod),
                pod_ref.uid
            ));
        }
        extra.insert(EXTRA_POD_NAME.to_owned(), vec![pod_ref.name.clone()]);
        extra.insert(EXTRA_POD_UID.to_owned(), vec![pod_ref.uid.clone()]);
        // For a pod-bound token the node is reported, not checked: the pod check covers it.
        if let Some(node_ref) = &k.node {
            extra.insert(EXTRA_NODE_NAME.to_owned(), vec![node_ref.name.clone()]);
            if !node_ref.uid.is_empty() {
                extra.insert(EXTRA_NODE_UID.to_owned(), vec![node_ref.uid.clone()]);
            }
        }
    }
    if !claims.jti.is_empty() {
        extra.insert(EXTRA_CREDENTIAL_ID.to_owned(), vec![format!("JTI={}", claims.jti)]);
    }
    Ok(Authenticated { user: service_account_user(namespace, &sa_ref.name, &sa_ref.uid, extra), audiences })
}

fn authenticate_legacy(
    state: &State,
    token: &str,
    claims: &LegacyClaims,
    requested: &[String],
) -> Result<Authenticated, String> {
    // A legacy token has no audience: the apiserver takes it as meant for the API itself.
    let audiences = intersect(&state.api_audiences, requested)?;
    let expected_sub = format!("{PREFIX}{}:{}", claims.namespace, claims.service_account_name);
    if claims.sub != expected_sub {
        return Err("sub claim is invalid".to_owned());
    }
    let secret: Secret =
        get(state, &claims.namespace, &claims.secret_name).ok_or_else(|| "token has been invalidated".to_owned())?;
    let stored = secret.data.as_ref().and_then(|d| d.get("token")).map(|t| t.0.as_slice());
    if stored != Some(token.as_bytes()) {
        return Err("token does not match server's copy".to_owned());
    }
    let sa: ServiceAccount = get(state, &claims.namespace, &claims.service_account_name)
        .ok_or_else(|| Kind::ServiceAccount.not_found(&claims.service_account_name).to_string())?;
    if uid_of(&sa) != claims.service_account_uid {
        return Err(format!(
            "ServiceAccount UID ({}) does not match claim ({})",
            uid_of(&sa),
            claims.service_account_uid
        ));
    }
    let user = service_account_user(
        &claims.namespace,
        &claims.service_account_name,
        &claims.service_account_uid,
        BTreeMap::new(),
    );
    Ok(Authenticated { user, audiences })
}

/// The status a TokenReview of `token` for `audiences` answers with.
pub fn status(state: &State, token: &str, audiences: &[String]) -> TokenReviewStatus {
    match authenticate(state, token, audiences) {
        Ok(ok) => TokenReviewStatus {
            authenticated: Some(true),
            user: Some(ok.user),
            audiences: Some(ok.audiences),
            error: None,
        },
        Err(error) => TokenReviewStatus { authenticated: Some(false), error: Some(error), ..Default::default() },
    }
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`. A token that does not
/// authenticate is not a request error: the answer is `authenticated: false` and why.
pub fn review(state: &State, body: Value) -> Result<TokenReview, ApiError> {
    check_type_meta("authentication.k8s.io/v1", "TokenReview", &body)?;
    let mut review: TokenReview = serde_json::from_value(body).map_err(|e| {
        ApiError::BadRequest(format!("TokenReview in version \"v1\" cannot be handled as a TokenReview: {e}"))
    })?;
    let token = review.spec.token.clone().unwrap_or_default();
    if token.is_empty() {
        return Err(ApiError::BadRequest("token is required for TokenReview in authentication".to_owned()));
    }
    let requested = review.spec.audiences.clone().unwrap_or_default();
    review.status = Some(status(state, &token, &requested));
    review.metadata = Default::default();
    Ok(review)
}
