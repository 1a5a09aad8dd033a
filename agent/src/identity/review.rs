//! TokenReview, cached by token fingerprint: a caller's calls cost one review
//! per cache period, concurrent calls with one token share one review, and a
//! token the API server refused is not sent again within the period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::OnceCell;

use crate::metrics::Metrics;
use vaultlet_parse::token::Claims;

/// A caller waits at most this long for the API server to review its token.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds the cache however many distinct tokens arrive.
const MAX_ENTRIES: usize = 8192;

const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";

/// What the API server vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewed {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
    /// Present when the API server reports it (Kubernetes 1.30+ bound tokens).
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("the Kubernetes API refused the token: {0}")]
    Rejected(String),
    #[error("the token does not belong to a ServiceAccount")]
    NotServiceAccount,
    #[error(
        "the Kubernetes API does not say which pod the token is bound to (no pod-name and pod-uid in the \
         TokenReview): a legacy Secret-based token, or an API server older than 1.22"
    )]
    NotPodBound,
    #[error("cannot review the token: the Kubernetes API is unavailable: {0}")]
    Unavailable(String),
    #[error("too many new tokens from this caller; retry in a moment")]
    RateLimited,
}

type Outcome = Result<Arc<Reviewed>, ReviewError>;

/// A digest of the token, so that the cache never holds the token itself.
fn fingerprint(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

#[derive(Default)]
struct Entry {
    cell: OnceCell<(Outcome, Instant)>,
}

impl Entry {
    fn expired(&self, now: Instant) -> bool {
        self.cell.get().is_some_and(|(_, until)| now >= *until)
    }
}

pub struct Reviewer {
    api: Api<TokenReview>,
    audience: String,
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], Arc<Entry>>>,
    metrics: Arc<Metrics>,
}

impl Reviewer {
    pub fn new(client: kube::Client, audience: String, ttl: Duration, metrics: Arc<Metrics>) -> Reviewer {
        Reviewer { api: Api::all(client), audience, ttl, cache: Mutex::default(), metrics }
    }

    /// Reviews `token` (whose unverified claims are `claims`), from the cache
    /// when a review of it is fresh. Never cached past the token's expiry. A
    /// review is sent only if `may_call` agrees (the caller's rate limit).
    /// On success, also says until when the answer may be reused.
    pub async fn review(
        &self,
        token: &str,
        claims: &Claims,
        may_call: impl FnOnce() -> bool,
    ) -> Result<(Arc<Reviewed>, Instant), ReviewError> {
        let key = fingerprint(token);
        let entry = {
            let now = Instant::now();
            let mut cache = self.cache.lock().expect("review cache lock");
            match cache.get(&key) {
                Some(e) if !e.expired(now) => e.clone(),
                _ => {
                    if cache.len() >= MAX_ENTRIES {
                        cache.retain(|_, e| !e.expired(now));
                        if cache.len() >= MAX_ENTRIES {
                            cache.clear();
                        }
                    }
                    cache.entry(key).insert_entry(Arc::default()).get().clone()
                }
            }
        };
        let (outcome, until) = entry
            .cell
            .get_or_init(|| async {
                if !may_call() {
                    return (Err(ReviewError::RateLimited), Instant::now());
                }
                let outcome = self.call(token).await;
                (outcome.clone(), self.cache_until(&outcome, claims))
            })
            .await;
        outcome.clone().map(|r| (r, *until))
    }

    fn cache_until(&self, outcome: &Outcome, claims: &Claims) -> Instant {
        let now = Instant::now();
        match outcome {
            // An outage is not a verdict: the next call asks again.
            Err(ReviewError::Unavailable(_) | ReviewError::RateLimited) => now,
            Err(_) => now + self.ttl,
            Ok(_) => {
                let unix_now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
                let left = Duration::from_secs(claims.exp.unwrap_or(0).saturating_sub(unix_now));
                now + self.ttl.min(left)
            }
        }
    }

    async fn call(&self, token: &str) -> Outcome {
        self.metrics.token_reviews.inc();
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_owned()), audiences: Some(vec![self.audience.clone()]) },
            ..TokenReview::default()
        };
        let started = Instant::now();
        let answer = tokio::time::timeout(REVIEW_TIMEOUT, self.api.create(&PostParams::default(), &review))
            .await
            .map_err(|_| ReviewError::Unavailable(format!("no answer within {REVIEW_TIMEOUT:?}")))
            .and_then(|r| r.map_err(|e| ReviewError::Unavailable(e.to_string())));
        self.metrics.latency.token_review.observe(started.elapsed().as_secs_f64());
        let answer = answer.inspect_err(|_| {
            self.metrics.token_review_errors.inc();
        })?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(ReviewError::Rejected(status.error.unwrap_or_else(|| "not authenticated".into())));
        }
        if !status.audiences.unwrap_or_default().contains(&self.audience) {
            return Err(ReviewError::Rejected(format!("not valid for audience {:?}", self.audience)));
        }
        let user = status.user.unwrap_or_default();
        let (namespace, service_account) = user
            .username
            .as_deref()
            .and_then(|u| u.strip_prefix("system:serviceaccount:"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(ns, sa)| (ns.to_owned(), sa.to_owned()))
            .ok_or(ReviewError::NotServiceAccount)?;
        // The pod comes from what the API server vouches for, never from the
        // token's own (unverified) claims.
        let extra = |name: &str| user.extra.as_ref()?.get(name)?.first().cloned();
        let (Some(pod_name), Some(pod_uid)) = (extra(EXTRA_POD_NAME), extra(EXTRA_POD_UID)) else {
            return Err(ReviewError::NotPodBound);
        };
        Ok(Arc::new(Reviewed { namespace, service_account, pod_name, pod_uid, node_name: extra(EXTRA_NODE_NAME) }))
    }
}
