//! A Kubernetes API server for tests: real protocol, in memory.
//!
//! It serves what vaultlet and its tools use of the API, following the API reference
//! and with k8s-openapi types for every object: Namespaces, Nodes, ServiceAccounts,
//! Secrets and Pods (get, list, watch, create, update, patch, delete, with
//! resourceVersions, selectors, bookmarks and 410 Gone), TokenRequest and TokenReview
//! with real RS256 ServiceAccount tokens, discovery enough for kubectl, and OIDC
//! discovery. It rejects what a real apiserver rejects, with the same `Status` codes and
//! reasons, so a client that works here has met the real protocol.
//!
//! It listens on plain `http://` on loopback. **A request without credentials acts as
//! the cluster administrator**: kubectl sends no token over plain http, and a real
//! apiserver would be HTTPS. A request with `Authorization: Bearer` must carry the admin
//! token ([`KubeApiServer::admin_token`], also in the kubeconfig) or a ServiceAccount
//! token valid for the API audiences, else it gets 401. There is no RBAC.
//!
//! ```no_run
//! # async fn demo() -> Result<(), vaultlet_tests::kube_api::KubeApiError> {
//! use std::time::Duration;
//! use vaultlet_tests::kube_api::{KubeApiServer, Options};
//!
//! let server = KubeApiServer::start(Options::default()).await?;
//! server.create_namespace("shop")?;
//! server.create_service_account("shop", "web")?;
//! let pod_uid = server.create_pod("shop", "web-1", "node-1", "web")?;
//! let token = server.mint_token("shop", "web", Some("web-1"), &["vaultlet"], Duration::from_secs(600))?;
//! server.faults().drop_watches();
//! server.shutdown().await;
//! # let _ = (pod_uid, token);
//! # Ok(()) }
//! ```

mod clock;
mod discovery;
mod error;
mod faults;
mod http;
mod ids;
mod kubeconfig;
mod object;
mod patch;
mod requests;
mod rest;
mod routes;
mod selector;
mod server;
mod state;
mod store;
mod strategy;
mod test_hooks;
mod token_request;
mod token_review;
mod tokens;
mod validation;
mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenReviewStatus};
use k8s_openapi::api::core::v1::{Container, Namespace, Node, Pod, PodSpec, PodStatus, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ObjectMeta};
use tokio::net::TcpListener;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;

pub use error::{ApiError, FieldError, FieldErrorKind, GroupResource};
pub use faults::Faults;
pub use jsonwebtoken::jwk::JwkSet;
pub use object::{Kind, Object, Stored};
pub use requests::RequestCount;
pub use token_review::{EXTRA_CREDENTIAL_ID, EXTRA_NODE_NAME, EXTRA_NODE_UID, EXTRA_POD_NAME, EXTRA_POD_UID};
pub use tokens::TokenError;

use self::selector::Filter;
use self::state::State;
use self::token_request::Grant;

/// The issuer of a kind/kubeadm cluster, and so of most tokens vaultlet will see.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Bounds of `Options::bookmark_interval` (a timer needs a period, and one that fits).
const MIN_BOOKMARK_INTERVAL: Duration = Duration::from_millis(10);
const MAX_BOOKMARK_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// The namespaces a new cluster has.
const SYSTEM_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// The image of pods made by [`KubeApiServer::create_pod`]; nothing runs it.
const POD_IMAGE: &str = "registry.k8s.io/pause:3.10";

#[derive(Clone, Debug)]
pub struct Options {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// `iss` of the tokens (`--service-account-issuer`).
    pub issuer: String,
    /// Audiences the API itself accepts (`--api-audiences`); empty means the issuer.
    pub api_audiences: Vec<String>,
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK (a real server:
    /// about a minute; short here so tests see them).
    pub bookmark_interval: Duration,
    /// Events kept for watches to resume from; older versions get 410 Gone.
    pub history_size: usize,
    /// The shortest lifetime a TokenRequest may ask for; 10 minutes on a real server.
    /// The library's `mint_token` is not bound by it.
    pub min_token_expiration: Duration,
    /// Whether a pod-bound token names the pod's node, and TokenReview reports it
    /// (the `ServiceAccountTokenPodNodeInfo` feature, on since Kubernetes 1.30).
    /// Off, the server acts as an older cluster does.
    pub pod_node_info: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            issuer: DEFAULT_ISSUER.to_owned(),
            api_audiences: Vec::new(),
            bookmark_interval: Duration::from_secs(1),
            history_size: 1000,
            min_token_expiration: Duration::from_secs(600),
            pod_node_info: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeApiError {
    #[error("invalid options: {0}")]
    Options(String),
    #[error("could not listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("could not write the kubeconfig {path}: {source}")]
    Kubeconfig { path: PathBuf, source: std::io::Error },
    /// The request the library made was refused, as it would have been over HTTP.
    #[error("refused ({code} {reason}): {0}", code = .0.code(), reason = .0.reason())]
    Api(#[from] ApiError),
}

/// A running server. Dropping it stops it too; `shutdown` waits until it has.
pub struct KubeApiServer {
    state: Arc<State>,
    addr: SocketAddr,
    stop: signal::Sender<bool>,
    task: JoinHandle<()>,
}

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: (!namespace.is_empty()).then(|| namespace.to_owned()),
        ..Default::default()
    }
}

fn uid_of(object: &Object) -> String {
    object.uid().to_owned()
}

impl KubeApiServer {
    pub async fn start(options: Options) -> Result<Self, KubeApiError> {
        if options.bookmark_interval < MIN_BOOKMARK_INTERVAL || options.bookmark_interval > MAX_BOOKMARK_INTERVAL {
            return Err(KubeApiError::Options(format!(
                "the bookmark interval must be between {MIN_BOOKMARK_INTERVAL:?} and {MAX_BOOKMARK_INTERVAL:?}"
            )));
        }
        let listener = TcpListener::bind(options.listen)
            .await
            .map_err(|source| KubeApiError::Listen { addr: options.listen, source })?;
        let addr = listener.local_addr().map_err(|source| KubeApiError::Listen { addr: options.listen, source })?;
        let api_audiences =
            if options.api_audiences.is_empty() { vec![options.issuer.clone()] } else { options.api_audiences };
        let (stop, stopped) = signal::channel(false);
        let state = Arc::new(State {
            store: store::Store::new(options.history_size),
            signer: tokens::Signer::generate(options.issuer)?,
            api_audiences,
            admin_token: ids::admin_token(),
            url: format!("http://{addr}"),
            faults: faults::FaultState::default(),
            requests: requests::RequestCounts::default(),
            bookmark_interval: options.bookmark_interval,
            min_token_expiration: options.min_token_expiration,
            pod_node_info: options.pod_node_info,
            shutdown: stopped.clone(),
        });
        let server = Self { task: tokio::spawn(server::run(listener, state.clone(), stopped)), state, addr, stop };
        for ns in SYSTEM_NAMESPACES {
            server.create_namespace(ns)?;
        }
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.state.url
    }

    /// The bearer token of the administrator (the kubeconfig's user).
    pub fn admin_token(&self) -> &str {
        &self.state.admin_token
    }

    pub fn issuer(&self) -> &str {
        self.state.signer.issuer()
    }

    /// The audiences a token needs to be accepted by this API itself.
    pub fn api_audiences(&self) -> &[String] {
        &self.state.api_audiences
    }

    /// The signing key, as served at `/openid/v1/jwks`.
    pub fn jwks(&self) -> JwkSet {
        self.state.signer.jwks()
    }

    /// A kubeconfig (YAML) for this server with the admin token, namespace `default`.
    pub fn kubeconfig(&self) -> String {
        kubeconfig::render(self.url(), self.admin_token())
    }

    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), KubeApiError> {
        kubeconfig::write(path, &self.kubeconfig())
            .map_err(|source| KubeApiError::Kubeconfig { path: path.to_owned(), source })
    }

    /// The latest resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        self.state.store.resource_version()
    }

    /// One stored object (`namespace` is "" for Namespaces and Nodes).
    pub fn get<K: Stored>(&self, namespace: &str, name: &str) -> Option<K> {
        self.state.store.get(K::STORED_KIND, namespace, name).and_then(K::from_object)
    }

    /// The stored objects of a kind, in one namespace or all.
    pub fn list<K: Stored>(&self, namespace: Option<&str>) -> Vec<K> {
        let filter = Filter { namespace: namespace.map(str::to_owned), ..Default::default() };
        self.state.store.list(K::STORED_KIND, &filter).0.into_iter().filter_map(K::from_object).collect()
    }

    /// Creates an object with the checks and defaults of a POST.
    pub fn create<K: Stored>(&self, object: K) -> Result<K, KubeApiError> {
        let created = rest::create_object(&self.state, object.into_object(), false)?;
        K::from_object(created).ok_or_else(|| ApiError::Internal("the store returned another kind".to_owned()).into())
    }

    /// Replaces an object with the checks of a PUT (unconditional if it carries no
    /// resourceVersion, else 409 on a stale one).
    pub fn replace<K: Stored>(&self, object: K) -> Result<K, KubeApiError> {
        let replaced = rest::replace_object(&self.state, object.into_object())?;
        K::from_object(replaced).ok_or_else(|| ApiError::Internal("the store returned another kind".to_owned()).into())
    }

    /// Deletes an object (a namespace with all it holds).
    pub fn delete<K: Stored>(&self, namespace: &str, name: &str) -> Result<(), KubeApiError> {
        rest::delete(&self.state, K::STORED_KIND, namespace, name, &DeleteOptions::default(), false)?;
        Ok(())
    }

    /// Creates a namespace (with its `default` ServiceAccount); returns its uid.
    pub fn create_namespace(&self, name: &str) -> Result<String, KubeApiError> {
        let ns = Namespace { metadata: meta("", name), ..Default::default() };
        Ok(uid_of(&rest::create_object(&self.state, Object::Namespace(ns), false)?))
    }

    /// Returns the new ServiceAccount's uid.
    pub fn create_service_account(&self, namespace: &str, name: &str) -> Result<String, KubeApiError> {
        let sa = ServiceAccount { metadata: meta(namespace, name), ..Default::default() };
        Ok(uid_of(&rest::create_object(&self.state, Object::ServiceAccount(sa), false)?))
    }

    /// Registers a node, as its kubelet would; returns its uid.
    pub fn create_node(&self, name: &str) -> Result<String, KubeApiError> {
        let node = Node { metadata: meta("", name), ..Default::default() };
        Ok(uid_of(&rest::create_object(&self.state, Object::Node(node), false)?))
    }

    /// Creates a pod scheduled on `node` (registered first if new) running as
    /// `service_account`, and reports it Running as its kubelet would. Returns its uid.
    pub fn create_pod(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
        service_account: &str,
    ) -> Result<String, KubeApiError> {
        if self.get::<Node>("", node).is_none() {
            self.create_node(node)?;
        }
        let container = Container { name: "app".to_owned(), image: Some(POD_IMAGE.to_owned()), ..Default::default() };
        let pod = Pod {
            metadata: meta(namespace, name),
            spec: Some(PodSpec {
                node_name: Some(node.to_owned()),
                service_account_name: Some(service_account.to_owned()),
                containers: vec![container],
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = rest::create_object(&self.state, Object::Pod(pod), false)?;
        // The kubelet's status update, which goes around the REST strategy that keeps
        // clients from writing status.
        self.state.store.update(Kind::Pod, namespace, name, false, |current| {
            let mut running = current.clone();
            if let Object::Pod(pod) = &mut running {
                pod.status = Some(PodStatus {
                    phase: Some("Running".to_owned()),
                    start_time: created.meta().creation_timestamp.clone(),
                    ..Default::default()
                });
            }
            Ok(running)
        })?;
        Ok(uid_of(&created))
    }

    pub fn delete_pod(&self, namespace: &str, name: &str) -> Result<(), KubeApiError> {
        self.delete::<Pod>(namespace, name)
    }

    /// Creates the Secret, or replaces it unconditionally if it exists.
    pub fn put_secret(&self, secret: Secret) -> Result<Secret, KubeApiError> {
        let (namespace, name) =
            (secret.metadata.namespace.clone().unwrap_or_default(), secret.metadata.name.clone().unwrap_or_default());
        if self.get::<Secret>(&namespace, &name).is_some() {
            let mut secret = secret;
            secret.metadata.resource_version = None;
            self.replace(secret)
        } else {
            self.create(secret)
        }
    }

    /// A bound token as TokenRequest would issue it (same checks: the account exists,
    /// the pod exists and runs as it), with any lifetime.
    pub fn mint_token(
        &self,
        namespace: &str,
        service_account: &str,
        pod: Option<&str>,
        audiences: &[&str],
        ttl: Duration,
    ) -> Result<String, KubeApiError> {
        let now = clock::now_seconds();
        self.mint(namespace, service_account, pod, audiences, now, i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX))
    }

    /// A bound token that expired an hour ago (issued two hours ago, lived one).
    pub fn mint_expired_token(
        &self,
        namespace: &str,
        service_account: &str,
        pod: Option<&str>,
        audiences: &[&str],
    ) -> Result<String, KubeApiError> {
        let issued_at = clock::now_seconds() - 2 * 3600;
        self.mint(namespace, service_account, pod, audiences, issued_at, 3600)
    }

    fn mint(
        &self,
        namespace: &str,
        service_account: &str,
        pod: Option<&str>,
        audiences: &[&str],
        issued_at: i64,
        expiration_seconds: i64,
    ) -> Result<String, KubeApiError> {
        let bound = pod.map(|name| BoundObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Pod".to_owned()),
            name: Some(name.to_owned()),
            uid: None,
        });
        let grant = Grant {
            namespace,
            service_account,
            bound: bound.as_ref(),
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            issued_at,
            expiration_seconds,
        };
        Ok(token_request::issue(&self.state, &grant)?.0)
    }

    /// A legacy (pre-1.24) Secret-based token for the account, with the Secret that
    /// keeps it valid. TokenReview accepts it for the API audiences only, without pod
    /// information: what a careful client must refuse.
    pub fn mint_legacy_token(&self, namespace: &str, service_account: &str) -> Result<String, KubeApiError> {
        Ok(token_request::mint_legacy(&self.state, namespace, service_account)?)
    }

    /// What a TokenReview of `token` for `audiences` would answer.
    pub fn review_token(&self, token: &str, audiences: &[&str]) -> TokenReviewStatus {
        let audiences: Vec<String> = audiences.iter().map(|a| (*a).to_owned()).collect();
        token_review::status(&self.state, token, &audiences)
    }

    pub fn faults(&self) -> Faults<'_> {
        Faults::new(&self.state)
    }

    /// Requests received for a verb (`get`, `list`, `watch`, `create`, `update`, `patch`,
    /// `delete`) and resource (`secrets`, `tokenreviews`, `serviceaccounts/token`, or
    /// the path of a non-resource request such as `/version`).
    pub fn request_count(&self, verb: &str, resource: &str) -> u64 {
        self.state.requests.get(verb, resource)
    }

    /// All request counts.
    pub fn request_counts(&self) -> Vec<RequestCount> {
        self.state.requests.all()
    }

    /// Stops listening and cuts every connection.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        // The task only ends by this signal; a panic in it has been reported already.
        let _ = self.task.await;
    }
}

/// `{key: value}` maps for labels and annotations, for tests that build objects.
pub fn string_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}
