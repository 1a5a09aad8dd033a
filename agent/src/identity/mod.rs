//! Who is calling. In production a caller is a ServiceAccount token verified by
//! TokenReview, bound to the pod it was issued for, that pod bound to the
//! process at the other end of the socket, and the pod to this node: a token
//! copied out of its pod is worthless here. In development mode every caller
//! of the socket is trusted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub mod peer;
pub mod pods;
pub mod review;

use peer::{Peer, PeerPod};
use pods::NodePods;
use review::{ReviewError, Reviewed, Reviewer};
pub use vaultlet_parse::config::PeerBinding;
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
    /// `NAMESPACE/SERVICEACCOUNT`, `NAMESPACE/POD` and the pod UID, as audit
    /// records name them (made once, not per call).
    pub audit_name: Option<Arc<str>>,
    pub audit_pod: Option<Arc<str>>,
    pub audit_pod_uid: Option<Arc<str>>,
}

impl Caller {
    pub fn new(namespace: String, service_account: Option<String>, pod: Option<Arc<Reviewed>>) -> Caller {
        let audit_name = service_account.as_ref().map(|sa| format!("{namespace}/{sa}").into());
        let audit_pod = pod.as_ref().and_then(|p| p.pod_name.as_ref().map(|n| format!("{}/{n}", p.namespace).into()));
        let audit_pod_uid = pod.as_ref().map(|p| p.pod_uid.as_str().into());
        Caller { namespace, service_account, pod, audit_name, audit_pod, audit_pod_uid }
    }
}

/// Why a caller was not authenticated. Messages tell the caller what to fix
/// and never contain the token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no ServiceAccount token: send `authorization: Bearer <token>` with the projected token of audience {audience:?}"
    )]
    MissingToken { audience: String },
    #[error("the authorization metadata is not `Bearer <token>`")]
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
    /// Pods of this node, for tokens whose review does not name the node.
    pub pods: NodePods,
    pub limiter: RateLimiter,
}

impl Authenticator {
    /// Development mode: every caller is anonymous, in `namespace`.
    pub fn open(namespace: &str) -> Authenticator {
        Authenticator::Open { caller: Arc::new(Caller::new(namespace.to_owned(), None, None)) }
    }

    pub async fn authenticate<T>(&self, request: &tonic::Request<T>) -> Result<Arc<Caller>, AuthError> {
        match self {
            Authenticator::Open { caller } => Ok(caller.clone()),
            Authenticator::Kubernetes(k) => k.authenticate(request).await,
        }
    }
}

impl KubeAuth {
    async fn authenticate<T>(&self, request: &tonic::Request<T>) -> Result<Arc<Caller>, AuthError> {
        let peer = request.extensions().get::<Peer>();
        let token = bearer(request, &self.audience)?;
        // The connection's last caller, while its review is fresh: a client
        // sends the same token on every call, so this is the common case.
        if let Some(caller) = peer.and_then(|p| p.memo.get(token)) {
            return Ok(caller);
        }
        let claims = token::peek(token)?;
        token::precheck(&claims, &self.audience, unix_now())?;
        let (reviewed, fresh_until) =
            self.reviewer.review(token, &claims, || self.limiter.allow(&peer_key(peer))).await?;
        self.check_peer(peer, &reviewed)?;
        self.check_node(&reviewed)?;
        let caller =
            Arc::new(Caller::new(reviewed.namespace.clone(), Some(reviewed.service_account.clone()), Some(reviewed)));
        if let Some(p) = peer {
            p.memo.put(token, caller.clone(), fresh_until);
        }
        Ok(caller)
    }

    fn check_peer(&self, peer: Option<&Peer>, reviewed: &Reviewed) -> Result<(), AuthError> {
        if self.peer_binding == PeerBinding::Off {
            return Ok(());
        }
        let refusal = match peer.map(|p| &p.pod) {
            Some(PeerPod::Pod(uid)) if *uid == reviewed.pod_uid => return Ok(()),
            Some(PeerPod::Pod(_)) => AuthError::PeerMismatch { pod: pod_name(reviewed) },
            Some(PeerPod::OutsidePods) => AuthError::PeerOutsidePods,
            Some(PeerPod::Unknown(why)) => AuthError::PeerUnknown(why.clone()),
            None => AuthError::PeerUnknown("no peer credentials".into()),
        };
        if self.peer_binding == PeerBinding::Warn {
            tracing::warn!(pid = ?peer.and_then(|p| p.pid), error = %refusal, "peer binding would refuse this call (--peer-binding warn)");
            return Ok(());
        }
        Err(refusal)
    }

    fn check_node(&self, reviewed: &Reviewed) -> Result<(), AuthError> {
        let here = match &reviewed.node_name {
            Some(node) => *node == self.node,
            None => reviewed
                .pod_name
                .as_deref()
                .is_some_and(|name| self.pods.runs_here(&reviewed.namespace, name, &reviewed.pod_uid)),
        };
        if here { Ok(()) } else { Err(AuthError::OtherNode { pod: pod_name(reviewed), node: self.node.clone() }) }
    }
}

fn pod_name(r: &Reviewed) -> String {
    format!("{}/{}", r.namespace, r.pod_name.as_deref().unwrap_or(&r.pod_uid))
}

/// Rate limits are per pod (or per process outside pods).
fn peer_key(peer: Option<&Peer>) -> String {
    match peer {
        Some(Peer { pod: PeerPod::Pod(uid), .. }) => uid.clone(),
        Some(Peer { pid: Some(pid), .. }) => format!("pid:{pid}"),
        _ => "unknown".into(),
    }
}

/// Token buckets per peer: how many TokenReviews (cache misses) a peer may
/// cause. A flood of bad tokens from one pod cannot become a flood of reviews.
pub struct RateLimiter {
    burst: f64,
    per_second: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(burst: u32, per_second: u32) -> RateLimiter {
        RateLimiter { burst: f64::from(burst), per_second: f64::from(per_second), buckets: Mutex::default() }
    }

    pub fn allow(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("limiter lock");
        if buckets.len() > 4096 {
            // Forget peers whose buckets are full again: they owe nothing.
            let (burst, rate) = (self.burst, self.per_second);
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < burst);
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The token of `authorization: Bearer <token>` (borrowed from the request).
fn bearer<'a, T>(request: &'a tonic::Request<T>, audience: &str) -> Result<&'a str, AuthError> {
    let value = request
        .metadata()
        .get("authorization")
        .ok_or_else(|| AuthError::MissingToken { audience: audience.to_owned() })?;
    let text = value.to_str().map_err(|_| AuthError::MalformedHeader)?;
    let (scheme, token) = text.split_once(' ').ok_or(AuthError::MalformedHeader)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::MalformedHeader);
    }
    Ok(token.trim())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_allows_a_burst_then_refuses() {
        let l = RateLimiter::new(3, 1);
        assert!((0..3).all(|_| l.allow("pod-a")));
        assert!(!l.allow("pod-a"));
        assert!(l.allow("pod-b"), "buckets are per peer");
    }
}
