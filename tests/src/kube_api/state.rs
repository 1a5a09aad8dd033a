//! What every request handler shares.

use std::time::Duration;

use tokio::sync::watch;

use super::faults::FaultState;
use super::requests::RequestCounts;
use super::store::Store;
use super::tokens::Signer;

pub struct State {
    pub store: Store,
    pub signer: Signer,
    /// The audiences a token must carry to be accepted by the API itself
    /// (`--api-audiences`; by default the issuer).
    pub api_audiences: Vec<String>,
    pub admin_token: String,
    /// `http://127.0.0.1:PORT`, as clients reach this server.
    pub url: String,
    pub faults: FaultState,
    pub requests: RequestCounts,
    pub bookmark_interval: Duration,
    /// The shortest `expirationSeconds` a TokenRequest may ask for (600 on a real server).
    pub min_token_expiration: Duration,
    /// Pod-bound tokens name the pod's node (Kubernetes 1.30 and later).
    pub pod_node_info: bool,
    pub shutdown: watch::Receiver<bool>,
}
