//! What can be read from a ServiceAccount token before asking the API server:
//! its claims, unverified. They are used only to refuse early (garbage, expired,
//! wrong audience, not bound to a pod) and to bound how long a review is cached;
//! acceptance always comes from a TokenReview.

use base64::Engine;
use serde::Deserialize;

/// Larger than any real ServiceAccount token; anything bigger is refused unread.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a JWT")]
    Malformed,
    #[error("the token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not for audience {expected:?}: request a projected token with that audience")]
    WrongAudience { expected: String },
    #[error(
        "the token is not bound to a pod (a legacy Secret-based token?): mount a projected ServiceAccount token with audience {expected:?}"
    )]
    NotPodBound { expected: String },
}

/// The claims vaultlet needs, as the token states them (not yet verified).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    pub exp: Option<u64>,
    pub audiences: Vec<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    pub node_name: Option<String>,
}

#[derive(Deserialize)]
struct Raw {
    exp: Option<u64>,
    #[serde(default)]
    aud: Audience,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaims>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct KubernetesClaims {
    pod: Option<Named>,
    node: Option<Named>,
}

#[derive(Deserialize)]
struct Named {
    name: Option<String>,
    uid: Option<String>,
}

/// Reads the payload of a JWT without verifying it.
pub fn peek(token: &str) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed)?;
    let raw: Raw = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
    let (pod, node) = match raw.kubernetes {
        Some(k) => (k.pod, k.node),
        None => (None, None),
    };
    Ok(Claims {
        exp: raw.exp,
        audiences: match raw.aud {
            Audience::None => vec![],
            Audience::One(a) => vec![a],
            Audience::Many(a) => a,
        },
        pod_name: pod.as_ref().and_then(|p| p.name.clone()),
        pod_uid: pod.and_then(|p| p.uid),
        node_name: node.and_then(|n| n.name),
    })
}

/// Refuses what no TokenReview could make acceptable.
pub fn precheck(claims: &Claims, audience: &str, now_unix: u64) -> Result<(), TokenError> {
    match claims.exp {
        Some(exp) if exp > now_unix => {}
        Some(_) => return Err(TokenError::Expired),
        None => return Err(TokenError::NotPodBound { expected: audience.to_owned() }),
    }
    if !claims.audiences.iter().any(|a| a == audience) {
        return Err(TokenError::WrongAudience { expected: audience.to_owned() });
    }
    if claims.pod_uid.is_none() {
        return Err(TokenError::NotPodBound { expected: audience.to_owned() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unsigned token with these claims (enough for what `peek` reads).
    pub fn jwt(claims: serde_json::Value) -> String {
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!("{}.{}.{}", b64(br#"{"alg":"RS256","kid":"k"}"#), b64(claims.to_string().as_bytes()), b64(b"sig"))
    }

    fn bound(exp: u64, aud: &[&str]) -> String {
        jwt(serde_json::json!({
            "aud": aud, "exp": exp, "sub": "system:serviceaccount:ns:web",
            "kubernetes.io": {"namespace": "ns", "pod": {"name": "web-1", "uid": "p-uid"}, "node": {"name": "n1", "uid": "n-uid"},
                              "serviceaccount": {"name": "web", "uid": "sa-uid"}}
        }))
    }

    #[test]
    fn reads_the_claims_of_a_pod_bound_token() {
        let c = peek(&bound(2000, &["vaultlet"])).unwrap();
        assert_eq!(c.exp, Some(2000));
        assert_eq!(c.audiences, ["vaultlet"]);
        assert_eq!(
            (c.pod_name.as_deref(), c.pod_uid.as_deref(), c.node_name.as_deref()),
            (Some("web-1"), Some("p-uid"), Some("n1"))
        );
        assert_eq!(precheck(&c, "vaultlet", 1000), Ok(()));
    }

    #[test]
    fn refuses_early_what_cannot_pass() {
        assert_eq!(precheck(&peek(&bound(900, &["vaultlet"])).unwrap(), "vaultlet", 1000), Err(TokenError::Expired));
        assert!(matches!(
            precheck(&peek(&bound(2000, &["vault"])).unwrap(), "vaultlet", 1000),
            Err(TokenError::WrongAudience { .. })
        ));
        let legacy = jwt(serde_json::json!({"iss": "kubernetes/serviceaccount", "sub": "system:serviceaccount:ns:web",
                                             "kubernetes.io/serviceaccount/namespace": "ns"}));
        assert!(matches!(precheck(&peek(&legacy).unwrap(), "vaultlet", 1000), Err(TokenError::NotPodBound { .. })));
        let unbound = jwt(serde_json::json!({"aud": ["vaultlet"], "exp": 2000, "kubernetes.io": {"namespace": "ns"}}));
        assert!(matches!(precheck(&peek(&unbound).unwrap(), "vaultlet", 1000), Err(TokenError::NotPodBound { .. })));
        for garbage in ["", "abc", "a.b", "a.b.c.d", "a.!!!.c", &"x".repeat(MAX_TOKEN_BYTES + 1)] {
            assert!(peek(garbage).is_err(), "{garbage:.20}");
        }
        let single_aud =
            jwt(serde_json::json!({"aud": "vaultlet", "exp": 2000, "kubernetes.io": {"pod": {"uid": "u"}}}));
        assert_eq!(precheck(&peek(&single_aud).unwrap(), "vaultlet", 1000), Ok(()));
    }
}
