//! One test's Kubernetes: a real control plane (`controlplane`), a loopback
//! proxy in front of it for faults (`proxy`), and what tests do with it as an
//! administrator: objects, nodes, pods (no kubelet: they stay Pending),
//! ServiceAccount tokens, kubeconfigs for the identities of `deploy/`.
//!
//! Tokens come from TokenRequest. A real API server issues them for at least
//! ten minutes; a test that needs one expiring sooner (or shaped as an older
//! cluster would issue it) gets one signed with the cluster's own
//! service-account key, which the API server then reviews like any other.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::authentication::v1::{
    BoundObjectReference, TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec, TokenReviewStatus,
};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::controlplane::ControlPlane;
use crate::proxy::Proxy;

pub struct Cluster {
    pub cp: ControlPlane,
    /// In front of the API server for the agent: `proxy.hang()` and friends.
    pub proxy: Proxy,
    admin: kube::Client,
}

/// A token to sign with the cluster's key (see the module comment).
pub struct SignedToken<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub pod: Option<&'a str>,
    pub audiences: &'a [&'a str],
    /// Seconds from now; negative: issued and expired in the past.
    pub expires_in: i64,
    /// Put the pod's node in the token, as Kubernetes 1.30 and later do.
    pub node_info: bool,
}

impl Cluster {
    /// Starts a control plane with its state in `dir` (and extra kube-apiserver flags).
    pub async fn start(dir: &Path, apiserver_args: &[String]) -> Cluster {
        Self::with(ControlPlane::up(dir, apiserver_args)).await
    }

    /// The control plane another process started in `dir`.
    pub async fn attach(dir: &Path) -> Cluster {
        Self::with(ControlPlane::attach(dir)).await
    }

    async fn with(cp: ControlPlane) -> Cluster {
        // The API server speaks TLS: one crypto provider for every client here.
        vaultlet::cli::install_crypto_provider();
        let proxy = Proxy::start(([127, 0, 0, 1], cp.port()).into()).await;
        let admin = client_from(&cp.admin_kubeconfig()).await;
        Cluster { cp, proxy, admin }
    }

    pub fn admin(&self) -> kube::Client {
        self.admin.clone()
    }

    pub fn url(&self) -> &str {
        self.cp.url()
    }

    /// The API server through `proxy`.
    pub fn proxy_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.proxy.port())
    }

    pub fn issuer(&self) -> &str {
        self.cp.issuer()
    }

    pub async fn get<K>(&self, namespace: &str, name: &str) -> Option<K>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        Api::<K>::namespaced(self.admin(), namespace).get_opt(name).await.expect("read from the API server")
    }

    pub async fn create<K>(&self, object: K) -> Result<K, kube::Error>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + Debug,
        K::DynamicType: Default,
    {
        let ns = object.meta().namespace.clone().unwrap_or_else(|| "default".into());
        Api::<K>::namespaced(self.admin(), &ns).create(&PostParams::default(), &object).await
    }

    /// PUT, with the object's resourceVersion (a stale one conflicts).
    pub async fn replace<K>(&self, object: K) -> Result<K, kube::Error>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + Debug,
        K::DynamicType: Default,
    {
        let ns = object.meta().namespace.clone().unwrap_or_else(|| "default".into());
        let name = object.meta().name.clone().expect("a named object");
        Api::<K>::namespaced(self.admin(), &ns).replace(&name, &PostParams::default(), &object).await
    }

    pub async fn delete<K>(&self, namespace: &str, name: &str) -> Result<(), kube::Error>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        Api::<K>::namespaced(self.admin(), namespace).delete(name, &DeleteParams::default()).await.map(|_| ())
    }

    pub async fn ensure_namespace(&self, name: &str) {
        let api: Api<Namespace> = Api::all(self.admin());
        if api.get_opt(name).await.expect("read namespaces").is_none() {
            let mut ns = Namespace::default();
            ns.metadata.name = Some(name.into());
            ignore_exists(api.create(&PostParams::default(), &ns).await);
        }
    }

    pub async fn ensure_service_account(&self, namespace: &str, name: &str) {
        self.ensure_namespace(namespace).await;
        let api: Api<ServiceAccount> = Api::namespaced(self.admin(), namespace);
        if api.get_opt(name).await.expect("read service accounts").is_none() {
            let mut sa = ServiceAccount::default();
            sa.metadata.name = Some(name.into());
            ignore_exists(api.create(&PostParams::default(), &sa).await);
        }
    }

    pub async fn create_node(&self, name: &str) {
        let mut node = Node::default();
        node.metadata.name = Some(name.into());
        ignore_exists(Api::<Node>::all(self.admin()).create(&PostParams::default(), &node).await);
    }

    /// A pod of `service_account` scheduled on `node` (it stays Pending); its UID.
    pub async fn create_pod(&self, namespace: &str, name: &str, node: &str, service_account: &str) -> String {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "nodeName": node,
                "serviceAccountName": service_account,
                "automountServiceAccountToken": false,
                "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]
            }
        }))
        .expect("a pod");
        let created = Api::<Pod>::namespaced(self.admin(), namespace)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("create pod {namespace}/{name}: {e}"));
        created.metadata.uid.expect("a pod UID")
    }

    /// A delete as kubectl sends it: with no kubelet, the pod stays Terminating.
    pub async fn delete_pod(&self, namespace: &str, name: &str) {
        self.delete::<Pod>(namespace, name).await.expect("delete the pod");
    }

    /// `kubectl delete --grace-period=0 --force`: the pod object is gone at once.
    pub async fn force_delete_pod(&self, namespace: &str, name: &str) {
        let dp = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
        Api::<Pod>::namespaced(self.admin(), namespace).delete(name, &dp).await.expect("force-delete the pod");
    }

    /// A token from TokenRequest, bound to `pod` when given (`audiences` empty:
    /// the API server's own). The API server's minimum lifetime is ten minutes.
    pub async fn token(
        &self,
        namespace: &str,
        service_account: &str,
        pod: Option<&str>,
        audiences: &[&str],
        ttl: Duration,
    ) -> String {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
                expiration_seconds: Some(ttl.as_secs() as i64),
                bound_object_ref: pod.map(|p| BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(p.into()),
                    uid: None,
                }),
            },
            ..TokenRequest::default()
        };
        let api: Api<ServiceAccount> = Api::namespaced(self.admin(), namespace);
        let answer: TokenRequest = api
            .create_subresource("token", service_account, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{service_account}: {e}"));
        answer.status.expect("a token").token
    }

    /// A token signed with the cluster's service-account key, claims as the API
    /// server writes them (the UIDs are read from the live objects).
    pub async fn sign_token(&self, t: SignedToken<'_>) -> String {
        let sa: ServiceAccount = self.get(t.namespace, t.service_account).await.expect("the service account");
        let mut k8s = serde_json::json!({
            "namespace": t.namespace,
            "serviceaccount": {"name": t.service_account, "uid": sa.metadata.uid},
        });
        if let Some(name) = t.pod {
            let pod: Pod = self.get(t.namespace, name).await.expect("the pod");
            k8s["pod"] = serde_json::json!({"name": name, "uid": pod.metadata.uid});
            let node_name = pod.spec.and_then(|s| s.node_name);
            if let (true, Some(node_name)) = (t.node_info, node_name) {
                let node = Api::<Node>::all(self.admin()).get(&node_name).await.expect("the pod's node");
                k8s["node"] = serde_json::json!({"name": node_name, "uid": node.metadata.uid});
            }
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() as i64;
        let (iat, exp) = if t.expires_in > 0 { (now, now + t.expires_in) } else { (now - 7200, now + t.expires_in) };
        let claims = serde_json::json!({
            "aud": t.audiences, "exp": exp, "iat": iat, "nbf": iat, "iss": self.issuer(),
            "jti": format!("{:032x}", fastrand_u128()),
            "sub": format!("system:serviceaccount:{}:{}", t.namespace, t.service_account),
            "kubernetes.io": k8s,
        });
        self.sign(&claims)
    }

    /// A legacy (pre-1.24) Secret-based token: no pod, no expiry.
    pub async fn legacy_token(&self, namespace: &str, service_account: &str) -> String {
        let sa: ServiceAccount = self.get(namespace, service_account).await.expect("the service account");
        let claims = serde_json::json!({
            "iss": "kubernetes/serviceaccount",
            "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
            "kubernetes.io/serviceaccount/namespace": namespace,
            "kubernetes.io/serviceaccount/secret.name": format!("{service_account}-token"),
            "kubernetes.io/serviceaccount/service-account.name": service_account,
            "kubernetes.io/serviceaccount/service-account.uid": sa.metadata.uid,
        });
        self.sign(&claims)
    }

    fn sign(&self, claims: &serde_json::Value) -> String {
        let pem = std::fs::read(self.cp.service_account_key()).expect("the service-account key");
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).expect("an RSA key");
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(self.key_id());
        jsonwebtoken::encode(&header, claims, &key).expect("sign a token")
    }

    /// The `kid` the API server gives its key: base64url of the SHA-256 of the
    /// public key's DER.
    fn key_id(&self) -> String {
        use base64::Engine;
        let pem = std::fs::read_to_string(self.cp.service_account_public_key()).expect("the public key");
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(body).expect("PEM");
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
    }

    /// What the API server answers a TokenReview of `token` for `audiences`.
    pub async fn review(&self, token: &str, audiences: &[&str]) -> TokenReviewStatus {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(audiences.iter().map(|a| (*a).to_owned()).collect()),
            },
            ..TokenReview::default()
        };
        let answer =
            Api::<TokenReview>::all(self.admin()).create(&PostParams::default(), &review).await.expect("a TokenReview");
        answer.status.unwrap_or_default()
    }

    /// A kubeconfig at `path` for whoever holds the token in `token_file`,
    /// reaching the API server at `server` (`url`, `proxy_url`, or a front's).
    pub fn write_kubeconfig(&self, path: &Path, token_file: &Path, server: &str) {
        use base64::Engine;
        let ca = std::fs::read(self.cp.ca_file()).expect("the CA");
        let config = serde_json::json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {
                "server": server,
                "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(ca),
            }}],
            "users": [{"name": "test", "user": {"tokenFile": token_file}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        });
        std::fs::write(path, config.to_string()).expect("write a kubeconfig");
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.cp.admin_kubeconfig()
    }

    /// `kubectl apply` of `manifests` (YAML), as the administrator.
    pub fn apply(&self, manifests: &str) -> Result<(), String> {
        let mut child = Command::new("kubectl")
            .args(["apply", "--server-side", "-f", "-"])
            .env("KUBECONFIG", self.admin_kubeconfig())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("kubectl (Debian's package `kubectl`): {e}"))?;
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(manifests.as_bytes()).map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
    }
}

/// The YAML `kubectl kustomize DIR` renders, with the `components` enabled as
/// an overlay would enable them.
pub fn render(dir: &Path, components: &[&str]) -> String {
    let work = tempfile::tempdir().expect("temp dir");
    let target = if components.is_empty() {
        dir.to_owned()
    } else {
        // kustomize wants the overlay's paths relative to it.
        let up = "../".repeat(work.path().components().count() - 1);
        let rel = format!("{up}{}", dir.strip_prefix("/").expect("an absolute path").display());
        let list: Vec<String> = components.iter().map(|c| format!("{rel}/{c}")).collect();
        let overlay = format!("resources: [{rel}]\ncomponents: [{}]\n", list.join(", "));
        std::fs::write(work.path().join("kustomization.yaml"), overlay).expect("overlay");
        work.path().to_owned()
    };
    let out =
        Command::new("kubectl").args(["kustomize", "--load-restrictor=LoadRestrictionsNone"]).arg(&target).output();
    let out = out.expect("kubectl kustomize (Debian's package `kubectl`)");
    assert!(out.status.success(), "kubectl kustomize {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("YAML")
}

pub async fn client_from(kubeconfig: &Path) -> kube::Client {
    let config = kube::config::Kubeconfig::read_from(kubeconfig).expect("read a kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default()).await.expect("a client config");
    kube::Client::try_from(config).expect("a Kubernetes client")
}

fn ignore_exists<T>(result: Result<T, kube::Error>) {
    match result {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_already_exists() => {}
        Err(e) => panic!("create: {e}"),
    }
}

fn fastrand_u128() -> u128 {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("random bytes");
    u128::from_le_bytes(bytes)
}
