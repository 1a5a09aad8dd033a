//! Who is calling. In production a caller is a ServiceAccount token verified by
//! TokenReview, bound to the pod it was issued for, that pod bound to the
//! process at the other end of the socket, and the pod to this node: a token
//! copied out of its pod is worthless here. In development mode every caller
//! of the socket is trusted.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tonic::metadata::{Ascii, MetadataKey, MetadataMap};
use vaultlet_client::TOKEN_METADATA;

pub mod peer;
pub mod pods;
pub mod review;

use peer::{Peer, PeerPod};
use pods::NodePods;
use review::{ReviewError, Reviewed, Reviewer};
pub use vaultlet_parse::config::PeerBinding;

use crate::limits::{PeerKey, RateLimiter};
use vaultlet_parse::token::{self, TokenError};

/// The authenticated caller of a request (shared by the calls of a connection
/// that present the same token).
#[derive(Debug)]
pub struct Caller {
    /// References without a namespace resolve here.
    pub namespace: String,
    /// `None` in development mode.
    pub service_account: Option<String>,
    /// The pod the token is bound to (production).
    pub pod: Option<Arc<Reviewed>>,
    /// When the token expires: a watch open with it ends then (the client
    /// reconnects with the token kubelet has rotated in meanwhile).
    pub valid_until: Option<SystemTime>,
    /// The token's pod is not the calling process's pod, and `--peer-binding
    /// warn` let the call through: its audit record says so.
    pub binding_violated: bool,
    /// `NAMESPACE/SERVICEACCOUNT`, `NAMESPACE/POD` and the pod UID, as audit
    /// records name them (made once, not per call).
    pub audit_name: Option<Arc<str>>,
    pub audit_pod: Option<Arc<str>>,
    pub audit_pod_uid: Option<Arc<str>>,
}

impl Caller {
    pub fn new(namespace: String, service_account: Option<String>, pod: Option<Arc<Reviewed>>) -> Caller {
        let audit_name = service_account.as_ref().map(|sa| format!("{namespace}/{sa}").into());
        let audit_pod = pod.as_ref().map(|p| format!("{}/{}", p.namespace, p.pod_name).into());
        let audit_pod_uid = pod.as_ref().map(|p| p.pod_uid.as_str().into());
        Caller {
            namespace,
            service_account,
            pod,
            valid_until: None,
            binding_violated: false,
            audit_name,
            audit_pod,
            audit_pod_uid,
        }
    }
}

/// Why a caller was not authenticated. Messages tell the caller what to fix
/// and never contain the token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no ServiceAccount token: send `authorization: Bearer <token>` with the projected token of audience {audience:?}"
    )]
    MissingToken { audience: String },
    #[error("the token metadata sends two tokens: send it once, in `authorization` or in `vaultlet-token`")]
    TwoTokens,
    #[error("the token metadata is neither `authorization: Bearer <token>` nor `vaultlet-token: <token>`")]
    MalformedHeader,
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("{0}")]
    Review(#[from] ReviewError),
    #[error("the token belongs to pod {pod} but the calling process is not in that pod")]
    PeerMismatch { pod: String },
    #[error("the calling process is not in any pod; only pods may use their tokens here")]
    PeerOutsidePods,
    #[error("the calling process could not be identified: {0}")]
    PeerUnknown(String),
    #[error("the token's pod {pod} does not run on this node ({node}); call the agent on its own node")]
    OtherNode { pod: String, node: String },
    #[error("the token's pod {pod} is gone (deleted from this node); its tokens are no longer accepted")]
    PodGone { pod: String },
}

impl AuthError {
    /// An outage of the API server is not the caller's fault: it may retry.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AuthError::Review(ReviewError::Unavailable(_)))
    }
}

/// How callers are authenticated.
pub enum Authenticator {
    /// Development mode: no credential, every caller is the same anonymous one.
    Open { caller: Arc<Caller> },
    /// ServiceAccount tokens, verified and bound (see the module comment).
    Kubernetes(Box<KubeAuth>),
}

pub struct KubeAuth {
    pub audience: String,
    pub reviewer: Reviewer,
    pub peer_binding: PeerBinding,
    pub node: String,
    /// Pods of this node: whether a token's pod runs here, and is not gone.
    pub pods: NodePods,
    pub limiter: RateLimiter,
}

impl Authenticator {
    /// Development mode: every caller is anonymous, in `namespace`.
    pub fn open(namespace: &str) -> Authenticator {
        Authenticator::Open { caller: Arc::new(Caller::new(namespace.to_owned(), None, None)) }
    }

    /// The caller of a request from `peer` with `metadata`.
    pub async fn authenticate(&self, peer: Option<&Peer>, metadata: &MetadataMap) -> Result<Arc<Caller>, AuthError> {
        let caller = match self {
            Authenticator::Open { caller } => caller.clone(),
            Authenticator::Kubernetes(k) => k.authenticate(peer, metadata).await?,
        };
        if let Some(p) = peer {
            p.mark_authenticated();
        }
        Ok(caller)
    }

    /// Whether `caller` may still act now: its token has not expired and its
    /// pod is not gone. Open watches ask this on every wake-up.
    pub fn still_valid(&self, caller: &Caller) -> Result<(), AuthError> {
        let Authenticator::Kubernetes(k) = self else { return Ok(()) };
        if caller.valid_until.is_some_and(|t| SystemTime::now() >= t) {
            return Err(TokenError::Expired.into());
        }
        match &caller.pod {
            Some(pod) => k.check_not_gone(pod),
            None => Ok(()),
        }
    }

    /// Changes after which `still_valid` may answer differently (pods gone).
    pub fn changes(&self) -> Option<watch::Receiver<u64>> {
        match self {
            Authenticator::Open { .. } => None,
            Authenticator::Kubernetes(k) => Some(k.pods.gone()),
        }
    }

    /// Why a connection from `peer` is refused as soon as it is accepted:
    /// with `--peer-binding enforce`, a process outside any pod (or one that
    /// cannot be identified) could never use a token here.
    pub fn refuse_at_accept(&self, peer: &Peer) -> Option<AuthError> {
        let Authenticator::Kubernetes(k) = self else { return None };
        if k.peer_binding != PeerBinding::Enforce {
            return None;
        }
        match &peer.pod {
            PeerPod::Pod(_) => None,
            PeerPod::OutsidePods => Some(AuthError::PeerOutsidePods),
            PeerPod::Unknown(why) => Some(AuthError::PeerUnknown(why.clone())),
        }
    }
}

impl KubeAuth {
    async fn authenticate(&self, peer: Option<&Peer>, metadata: &MetadataMap) -> Result<Arc<Caller>, AuthError> {
        let token = bearer(metadata, &self.audience)?;
        // The connection's last caller, while its review is fresh: a client
        // sends the same token on every call, so this is the common case.
        if let Some(caller) = peer.and_then(|p| p.memo.get(token)) {
            if let Some(pod) = &caller.pod {
                self.check_not_gone(pod)?;
            }
            return Ok(caller);
        }
        let claims = token::peek(token)?;
        token::precheck(&claims, &self.audience, unix_now())?;
        // A token presented by a process of another pod is refused before it
        // costs a TokenReview (the claim is unverified, but only a match goes on).
        if self.peer_binding == PeerBinding::Enforce
            && let Some(PeerPod::Pod(uid)) = peer.map(|p| &p.pod)
            && claims.pod_uid.as_deref() != Some(uid.as_str())
        {
            let pod = claims.pod_name.clone().or(claims.pod_uid.clone()).unwrap_or_default();
            return Err(AuthError::PeerMismatch { pod });
        }
        let key = peer.map_or(PeerKey::Unidentified, Peer::key);
        let (reviewed, fresh_until) = self.reviewer.review(token, &claims, || self.limiter.allow(&key)).await?;
        let violated = self.check_peer(peer, &reviewed)?;
        self.check_node(&reviewed)?;
        self.check_not_gone(&reviewed)?;
        let mut caller =
            Caller::new(reviewed.namespace.clone(), Some(reviewed.service_account.clone()), Some(reviewed));
        caller.valid_until = claims.exp.map(|exp| UNIX_EPOCH + Duration::from_secs(exp));
        caller.binding_violated = violated;
        let caller = Arc::new(caller);
        if let Some(p) = peer {
            p.memo.put(token, caller.clone(), fresh_until);
        }
        Ok(caller)
    }

    /// Refuses a token whose pod is not the peer's (enforce); in warn mode
    /// lets it through and says so (`true`).
    fn check_peer(&self, peer: Option<&Peer>, reviewed: &Reviewed) -> Result<bool, AuthError> {
        if self.peer_binding == PeerBinding::Off {
            return Ok(false);
        }
        let refusal = match peer.map(|p| &p.pod) {
            Some(PeerPod::Pod(uid)) if *uid == reviewed.pod_uid => return Ok(false),
            Some(PeerPod::Pod(_)) => AuthError::PeerMismatch { pod: pod_name(reviewed) },
            Some(PeerPod::OutsidePods) => AuthError::PeerOutsidePods,
            Some(PeerPod::Unknown(why)) => AuthError::PeerUnknown(why.clone()),
            None => AuthError::PeerUnknown("no peer credentials".into()),
        };
        if self.peer_binding == PeerBinding::Warn {
            tracing::warn!(pid = ?peer.and_then(|p| p.pid), error = %refusal, "peer binding would refuse this call (--peer-binding warn)");
            return Ok(true);
        }
        Err(refusal)
    }

    fn check_node(&self, reviewed: &Reviewed) -> Result<(), AuthError> {
        let here = match &reviewed.node_name {
            Some(node) => *node == self.node,
            None => self.pods.runs_here(&reviewed.namespace, &reviewed.pod_name, &reviewed.pod_uid),
        };
        if here { Ok(()) } else { Err(AuthError::OtherNode { pod: pod_name(reviewed), node: self.node.clone() }) }
    }

    /// A pod this agent saw deleted is refused at once, whatever a review
    /// cache (ours, or the API server's) still says of its tokens.
    fn check_not_gone(&self, reviewed: &Reviewed) -> Result<(), AuthError> {
        if self.pods.is_gone(&reviewed.pod_uid) {
            return Err(AuthError::PodGone { pod: pod_name(reviewed) });
        }
        Ok(())
    }
}

fn pod_name(r: &Reviewed) -> String {
    format!("{}/{}", r.namespace, r.pod_name)
}

/// The token of `authorization: Bearer <token>`, or of `vaultlet-token:
/// <token>` (what the Rust client sends once the agent announced it reads it;
/// see `vaultlet_client::TOKEN_METADATA`). Borrowed from the request.
fn bearer<'a>(metadata: &'a MetadataMap, audience: &str) -> Result<&'a str, AuthError> {
    // Keys made once: a lookup by `&str` parses the header name every call.
    static TOKEN: LazyLock<MetadataKey<Ascii>> = LazyLock::new(|| MetadataKey::from_static(TOKEN_METADATA));
    static AUTHORIZATION: LazyLock<MetadataKey<Ascii>> = LazyLock::new(|| MetadataKey::from_static("authorization"));
    let token = match (metadata.get(&*TOKEN), metadata.get(&*AUTHORIZATION)) {
        (Some(_), Some(_)) => return Err(AuthError::TwoTokens),
        (Some(value), None) => value.to_str().map_err(|_| AuthError::MalformedHeader)?,
        (None, Some(value)) => {
            let text = value.to_str().map_err(|_| AuthError::MalformedHeader)?;
            let (scheme, token) = text.split_once(' ').ok_or(AuthError::MalformedHeader)?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(AuthError::MalformedHeader);
            }
            token
        }
        (None, None) => return Err(AuthError::MissingToken { audience: audience.to_owned() }),
    };
    match token.trim() {
        "" => Err(AuthError::MalformedHeader),
        token => Ok(token),
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    fn metadata(headers: &[(&'static str, &'static str)]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for (name, value) in headers {
            m.insert(*name, MetadataValue::from_static(value));
        }
        m
    }

    #[test]
    fn the_token_comes_from_either_header_but_only_one() {
        let token = |h: &[(&'static str, &'static str)]| bearer(&metadata(h), "vaultlet").map(str::to_owned);
        assert_eq!(token(&[("authorization", "Bearer abc")]).unwrap(), "abc");
        assert_eq!(token(&[("authorization", "bearer  abc ")]).unwrap(), "abc");
        assert_eq!(token(&[(TOKEN_METADATA, "abc")]).unwrap(), "abc");
        let two = token(&[("authorization", "Bearer abc"), (TOKEN_METADATA, "abc")]).unwrap_err();
        assert!(matches!(two, AuthError::TwoTokens), "{two}");
        assert!(matches!(token(&[]).unwrap_err(), AuthError::MissingToken { .. }));
        for bad in [&[("authorization", "Basic abc")][..], &[("authorization", "Bearer ")], &[(TOKEN_METADATA, " ")]] {
            assert!(matches!(token(bad).unwrap_err(), AuthError::MalformedHeader), "{bad:?}");
        }
    }
}
