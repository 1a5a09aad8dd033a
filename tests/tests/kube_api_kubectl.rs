//! The test API server driven by kubectl (/usr/bin/kubectl), the way a person debugging
//! the tests would use it. kubectl is required: without it these tests fail.

use std::path::{Path, PathBuf};
use std::process::Output;

use k8s_openapi::api::core::v1::{Pod, Secret};
use serde_json::Value;
use tempfile::TempDir;
use tokio::process::Command;
use vaultlet_tests::kube_api::{EXTRA_POD_NAME, KubeApiServer, Options};

const KUBECTL: &str = "/usr/bin/kubectl";

struct Kubectl {
    server: KubeApiServer,
    dir: TempDir,
    kubeconfig: PathBuf,
}

impl Kubectl {
    async fn start() -> Self {
        assert!(
            Path::new(KUBECTL).is_file(),
            "{KUBECTL} is missing: these tests drive the test API server with kubectl; install it (it is part of this project's machine setup)"
        );
        let server = KubeApiServer::start(Options::default()).await.expect("server starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        Self { server, dir, kubeconfig }
    }

    /// Runs kubectl with a private discovery cache; returns its output whatever the exit.
    async fn output(&self, args: &[&str]) -> Output {
        let cache = self.dir.path().join("cache");
        Command::new(KUBECTL)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&cache)
            .args(args)
            .env("HOME", self.dir.path())
            .output()
            .await
            .expect("kubectl runs")
    }

    /// Runs kubectl and requires success; returns stdout.
    async fn run(&self, args: &[&str]) -> String {
        let out = self.output(args).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kubectl {args:?} failed: {stderr}\n{stdout}");
        stdout
    }

    fn file(&self, name: &str, contents: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write file");
        path.to_string_lossy().into_owned()
    }

    fn secret_value(&self, name: &str, key: &str) -> Option<String> {
        let secret: Secret = self.server.get("default", name)?;
        let bytes = secret.data?.remove(key)?.0;
        Some(String::from_utf8(bytes).expect("UTF-8 test value"))
    }
}

const SECRET_YAML: &str = "\
apiVersion: v1
kind: Secret
metadata:
  name: db
  labels:
    vaultlet.io/managed: \"true\"
stringData:
  secrets.json: '{\"password\":\"one\"}'
";

#[tokio::test]
async fn kubectl_manages_secrets() {
    let k = Kubectl::start().await;
    k.server.create_namespace("shop").expect("namespace");
    let mut other = Secret::default();
    other.metadata.name = Some("elsewhere".to_owned());
    other.metadata.namespace = Some("shop".to_owned());
    k.server.put_secret(other).expect("secret");

    let file = k.file("secret.yaml", SECRET_YAML);
    let applied = k.run(&["apply", "--validate=false", "-f", &file]).await;
    assert!(applied.contains("secret/db created"), "{applied}");
    assert_eq!(k.secret_value("db", "secrets.json").as_deref(), Some("{\"password\":\"one\"}"));
    let changed = k.file("secret2.yaml", &SECRET_YAML.replace("one", "two"));
    k.run(&["apply", "--validate=false", "-f", &changed]).await;
    assert_eq!(k.secret_value("db", "secrets.json").as_deref(), Some("{\"password\":\"two\"}"));

    let all = k.run(&["get", "secrets", "-A"]).await;
    for expected in ["NAMESPACE", "default", "db", "shop", "elsewhere"] {
        assert!(all.contains(expected), "{expected} missing from:\n{all}");
    }

    k.run(&["label", "secret", "db", "team=payments"]).await;
    let labels = k.server.get::<Secret>("default", "db").and_then(|s| s.metadata.labels).unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("payments"));
    assert_eq!(labels.get("vaultlet.io/managed").map(String::as_str), Some("true"));
    let selected = k.run(&["get", "secrets", "-l", "team=payments", "-o", "name"]).await;
    assert_eq!(selected.trim(), "secret/db");

    k.run(&["patch", "secret", "db", "--type", "merge", "-p", r#"{"stringData":{"extra":"x"}}"#]).await;
    assert_eq!(k.secret_value("db", "extra").as_deref(), Some("x"));
    k.run(&["patch", "secret", "db", "--type", "json", "-p", r#"[{"op":"remove","path":"/data/extra"}]"#]).await;
    assert_eq!(k.secret_value("db", "extra"), None);

    let json: Value = serde_json::from_str(&k.run(&["get", "secret", "db", "-o", "json"]).await).expect("JSON");
    assert_eq!(json["metadata"]["labels"]["team"], "payments");

    let deleted = k.run(&["delete", "secret", "db"]).await;
    assert!(deleted.contains("deleted"), "{deleted}");
    assert!(k.server.get::<Secret>("default", "db").is_none());
    let missing = k.output(&["get", "secret", "db"]).await;
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"));

    // Typed `kubectl create` sends protobuf, which this server refuses as it says.
    let typed = k.output(&["create", "secret", "generic", "typed", "--from-literal=a=b"]).await;
    assert!(!typed.status.success(), "protobuf must be refused");
    assert!(String::from_utf8_lossy(&typed.stderr).contains("unknown format"));
    k.server.shutdown().await;
}

#[tokio::test]
async fn kubectl_selects_pods_by_node_and_requests_tokens() {
    let k = Kubectl::start().await;
    k.server.create_service_account("default", "web").expect("sa");
    let uid = k.server.create_pod("default", "web-1", "n1", "web").expect("pod");
    k.server.create_pod("default", "web-2", "n2", "web").expect("pod");

    let on_n1 = k.run(&["get", "pods", "--field-selector", "spec.nodeName=n1", "-o", "name"]).await;
    assert_eq!(on_n1.trim(), "pod/web-1");
    let everywhere = k.run(&["get", "pods", "-A", "--field-selector", "spec.nodeName=n2"]).await;
    assert!(everywhere.contains("web-2") && !everywhere.contains("web-1"), "{everywhere}");

    let request = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"audiences":["vaultlet"],"boundObjectRef":{"kind":"Pod","apiVersion":"v1","name":"web-1"}}}"#;
    let file = k.file("req.json", request);
    let answer: Value = serde_json::from_str(
        &k.run(&["create", "--raw", "/api/v1/namespaces/default/serviceaccounts/web/token", "-f", &file]).await,
    )
    .expect("a TokenRequest in JSON");
    assert_eq!(answer["kind"], "TokenRequest");
    assert_eq!(answer["spec"]["expirationSeconds"], 3600);
    let token = answer["status"]["token"].as_str().expect("token");
    let review = k.server.review_token(token, &["vaultlet"]);
    assert_eq!(review.authenticated, Some(true), "{review:?}");
    let pod_name = review.user.and_then(|u| u.extra).and_then(|mut e| e.remove(EXTRA_POD_NAME));
    assert_eq!(pod_name, Some(vec!["web-1".to_owned()]));

    // Deleting a pod through kubectl revokes its tokens.
    k.run(&["delete", "pod", "web-1"]).await;
    assert!(k.server.get::<Pod>("default", "web-1").is_none());
    assert_eq!(k.server.review_token(token, &["vaultlet"]).authenticated, Some(false));
    assert!(!uid.is_empty());
    k.server.shutdown().await;
}
