//! The Helm chart (deploy/helm/vaultlet, generated from deploy/) against a real
//! API server: `helm install` with the default values succeeds, and every object
//! `helm template` declares is then on the server, owned by the release; an
//! upgrade that enables the webhook and changes the Vault address adds the
//! webhook's objects, rewrites ConfigMap vaultlet-vault and changes the
//! DaemonSet's `checksum/config` (which rolls the agents). That the chart's
//! objects are those of kustomize is deploy/check's part (deploy/helm/compare).
//!
//! helm comes from `scripts/helm` (built once from tests/helm; scripts/test
//! builds it before the tests).

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, GroupVersionKind};
use kube::discovery::{self, Scope};
use vaultlet_tests::cluster::Cluster;
use vaultlet_tests::stack::repo_root;

const NAMESPACE: &str = "vaultlet-system";

/// `scripts/helm ARGS`, with Helm's own state (cache, config, data) in `dir`.
fn helm(dir: &Path, args: &[&str]) -> String {
    let root = repo_root();
    let out = Command::new(root.join("scripts/helm"))
        .args(args)
        .current_dir(&root)
        .env("HELM_CACHE_HOME", dir.join("helm/cache"))
        .env("HELM_CONFIG_HOME", dir.join("helm/config"))
        .env("HELM_DATA_HOME", dir.join("helm/data"))
        .output()
        .expect("run scripts/helm");
    assert!(
        out.status.success(),
        "scripts/helm {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// The objects `helm template` declares with these `--set` values.
fn declared(dir: &Path, set: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["template", "vaultlet", "deploy/helm/vaultlet", "--namespace", NAMESPACE];
    for s in set {
        args.extend(["--set", s]);
    }
    let objects: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&helm(dir, &args)).expect("helm template's output is YAML");
    assert!(objects.len() > 10, "helm template declared only {} objects", objects.len());
    objects
}

/// GETs each object by kind and name; panics naming the first one missing. Every
/// one must carry the release's ownership annotations.
async fn all_exist(cluster: &Cluster, objects: &[serde_json::Value]) {
    for o in objects {
        let api_version = o["apiVersion"].as_str().expect("apiVersion");
        let kind = o["kind"].as_str().expect("kind");
        let name = o["metadata"]["name"].as_str().expect("metadata.name");
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, caps) = discovery::pinned_kind(&cluster.admin(), &gvk)
            .await
            .unwrap_or_else(|e| panic!("the API server does not serve {api_version} {kind}: {e}"));
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => {
                let ns = o["metadata"]["namespace"].as_str().unwrap_or_else(|| panic!("{kind} {name}: no namespace"));
                assert_eq!(ns, NAMESPACE, "{kind} {name} is not in the release namespace");
                Api::namespaced_with(cluster.admin(), ns, &resource)
            }
            Scope::Cluster => Api::all_with(cluster.admin(), &resource),
        };
        let live = api
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("GET {kind} {name}: {e}"))
            .unwrap_or_else(|| panic!("{kind} {name} is declared by the chart but not on the server"));
        let annotations = live.metadata.annotations.unwrap_or_default();
        assert_eq!(
            annotations.get("meta.helm.sh/release-name").map(String::as_str),
            Some("vaultlet"),
            "{kind} {name} is not owned by the release"
        );
    }
}

async fn config_checksum(cluster: &Cluster) -> String {
    let ds = cluster.get::<DaemonSet>(NAMESPACE, "vaultlet").await.expect("DaemonSet vaultlet");
    let annotations = ds.spec.unwrap().template.metadata.unwrap().annotations.unwrap_or_default();
    annotations.get("checksum/config").cloned().expect("a checksum/config annotation on the pod template")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_every_object_it_declares_and_upgrades() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), &[]).await;
    let kubeconfig = cluster.admin_kubeconfig();
    let kubeconfig = kubeconfig.to_str().expect("a UTF-8 path");

    // The release's namespace must exist before Helm records the release in it:
    // --create-namespace makes it, and the chart's Namespace object (with its Pod
    // Security labels) is then applied over it. Helm 4 waits for nothing by
    // default (--wait=hookOnly); here no kubelet runs, so nothing would get Ready.
    helm(
        dir.path(),
        &[
            "install",
            "vaultlet",
            "deploy/helm/vaultlet",
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "--kubeconfig",
            kubeconfig,
            "--wait=hookOnly",
        ],
    );
    let defaults = declared(dir.path(), &[]);
    all_exist(&cluster, &defaults).await;
    // The Namespace is the chart's, with the labels of deploy/namespace.yaml.
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cluster.admin());
    let labels = ns.get(NAMESPACE).await.unwrap().metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("pod-security.kubernetes.io/enforce").map(String::as_str), Some("privileged"), "{labels:?}");

    // An upgrade: the webhook (its TLS Secret would come from the operator) and another Vault.
    let before = config_checksum(&cluster).await;
    let set = ["inject.enabled=true,inject.certManager=false", "vault.address=https://bao.internal:8200"];
    let mut args = vec!["upgrade", "vaultlet", "deploy/helm/vaultlet", "--namespace", NAMESPACE];
    args.extend(["--kubeconfig", kubeconfig, "--wait=hookOnly", "--reuse-values"]);
    for s in &set {
        args.extend(["--set", s]);
    }
    helm(dir.path(), &args);
    let upgraded = declared(dir.path(), &set);
    assert!(upgraded.iter().any(|o| o["kind"] == "MutatingWebhookConfiguration"), "no webhook declared");
    all_exist(&cluster, &upgraded).await;
    let vault = cluster.get::<ConfigMap>(NAMESPACE, "vaultlet-vault").await.expect("ConfigMap vaultlet-vault");
    assert_eq!(vault.data.unwrap_or_default().get("VAULT_ADDR").map(String::as_str), Some("https://bao.internal:8200"));
    assert_ne!(config_checksum(&cluster).await, before, "a new VAULT_ADDR must change the pod template");

    let list = helm(dir.path(), &["list", "--namespace", NAMESPACE, "--kubeconfig", kubeconfig, "--output", "json"]);
    let releases: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(releases[0]["status"], "deployed", "{list}");
    assert_eq!(releases[0]["revision"], "2", "{list}");
}
