//! Who is calling. In production a caller is a ServiceAccount token verified by
//! TokenReview, bound to the pod it was issued for, that pod bound to the
//! process at the other end of the socket, and the pod to this node: a token
//! copied out of its pod is worthless here. In development mode every caller
//! of the socket is trusted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};

pub mod cgroup;
pub mod peer;
pub mod pods;
pub mod review;
pub mod token;

use peer::{Peer, PeerPod};
use pods::NodePods;
use review::{ReviewError, Reviewed, Reviewer};
use token::TokenError;

/// The authenticated caller of one request.
#[derive(Clone, Debug)]
pub struct Caller {
    /// References without a namespace resolve here.
    pub namespace: String,
    /// `None` in development mode.
    pub service_account: Option<String>,
    /// The pod the token is bound to (production).
    pub pod: Option<Arc<Reviewed>>,
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

/// What to do when the token's pod is not the calling process's pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerBinding {
    /// Refuse the call.
    Enforce,
    /// Log it and serve the call (for a first rollout).
    Warn,
    /// Do not look.
    Off,
}

/// How callers are authenticated.
pub enum Authenticator {
    /// Development mode: no credential, every caller is in `namespace`.
    Open { namespace: String },
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
    pub async fn authenticate<T>(&self, request: &tonic::Request<T>) -> Result<Caller, AuthError> {
        match self {
            Authenticator::Open { namespace } => {
                Ok(Caller { namespace: namespace.clone(), service_account: None, pod: None })
            }
            Authenticator::Kubernetes(k) => k.authenticate(request).await,
        }
    }
}

impl KubeAuth {
    async fn authenticate<T>(&self, request: &tonic::Request<T>) -> Result<Caller, AuthError> {
        let peer = request.extensions().get::<Peer>();
        let token = bearer(request, &self.audience)?;
        let claims = token::peek(token.expose_secret())?;
        token::precheck(&claims, &self.audience, unix_now())?;
        let reviewed =
            self.reviewer.review(token.expose_secret(), &claims, || self.limiter.allow(&peer_key(peer))).await?;
        self.check_peer(peer, &reviewed)?;
        self.check_node(&reviewed)?;
        Ok(Caller {
            namespace: reviewed.namespace.clone(),
            service_account: Some(reviewed.service_account.clone()),
            pod: Some(reviewed),
        })
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

/// The token of `authorization: Bearer <token>`.
fn bearer<T>(request: &tonic::Request<T>, audience: &str) -> Result<SecretString, AuthError> {
    let value = request
        .metadata()
        .get("authorization")
        .ok_or_else(|| AuthError::MissingToken { audience: audience.to_owned() })?;
    let text = value.to_str().map_err(|_| AuthError::MalformedHeader)?;
    let (scheme, token) = text.split_once(' ').ok_or(AuthError::MalformedHeader)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::MalformedHeader);
    }
    Ok(SecretString::from(token.trim()))
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
