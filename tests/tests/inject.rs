//! `vaultlet inject` against a real API server: deploy/ with the webhook
//! component is accepted; in a namespace that opts in and enforces Pod
//! Security `restricted`, an annotated pod comes out mutated and is admitted,
//! the old hostPath pod is refused by PodSecurity, a bad annotation is refused
//! with its name; and the webhook's failure modes (down, slow) behave as
//! deploy/inject/webhook.yaml documents.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, WebhookClientConfig};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use vaultlet_tests::agent::vaultlet_bin;
use vaultlet_tests::bao::free_port;
use vaultlet_tests::cluster::{Cluster, render};
use vaultlet_tests::stack::repo_root;

/// The webhook as a process (self-signed for 127.0.0.1); killed when dropped.
struct Webhook {
    child: Child,
    url: String,
    ca: Vec<u8>,
}

impl Webhook {
    fn start(dir: &Path) -> Webhook {
        let port = free_port();
        let ca_out = dir.join("inject-ca.crt");
        let log = std::fs::File::create(dir.join("inject.log")).unwrap();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(vaultlet_bin())
            .args(["inject", "--listen", &listen, "--self-signed", "127.0.0.1", "--ca-out"])
            .arg(&ca_out)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run vaultlet inject");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&listen).is_err() {
            assert!(Instant::now() < deadline, "vaultlet inject does not listen on {listen}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Webhook { child, url: format!("https://{listen}/mutate"), ca: std::fs::read(ca_out).unwrap() }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Points deploy/'s webhook configuration at `url`: in a cluster the API server
/// reaches the webhook through its Service; here nothing runs its pods.
async fn call_webhook_at(cluster: &Cluster, url: &str, ca: &[u8]) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(cluster.admin());
    let mut config = api.get("vaultlet-inject").await.unwrap();
    let webhooks = config.webhooks.as_mut().unwrap();
    webhooks[0].client_config =
        WebhookClientConfig { url: Some(url.into()), ca_bundle: Some(ByteString(ca.to_vec())), service: None };
    api.replace("vaultlet-inject", &PostParams::default(), &config).await.unwrap();
}

/// A pod that meets `restricted` by itself, with these annotations and labels.
fn pod(name: &str, namespace: &str, annotations: serde_json::Value, labels: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations, "labels": labels},
        "spec": {
            "serviceAccountName": "app",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]
        }
    }))
    .unwrap()
}

fn annotated(name: &str, namespace: &str) -> Pod {
    pod(name, namespace, serde_json::json!({"vaultlet.io/inject": "true"}), serde_json::json!({}))
}

/// Creates annotated pods in `shop` until one is refused (the API server follows
/// webhook configurations through a watch: the first may pass before it sees
/// the one just written); the refusal and how long its request took.
async fn refused_eventually(cluster: &Cluster, name: &str) -> (String, Duration) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for attempt in 0.. {
        let started = Instant::now();
        match cluster.create(annotated(&format!("{name}-{attempt}"), "shop")).await {
            Err(e) => return (e.to_string(), started.elapsed()),
            Ok(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(250)).await,
            Ok(_) => break,
        }
    }
    panic!("{name}: pods are still admitted after 15 s");
}

/// Creates `pod`, retrying while the API server has not yet seen the webhook
/// configuration just written (it follows it through a watch).
async fn create_eventually(cluster: &Cluster, pod: Pod) -> Pod {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match cluster.create(pod.clone()).await {
            Ok(created) => return created,
            Err(e) if Instant::now() < deadline && e.to_string().contains("failed calling webhook") => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("creating {:?}: {e}", pod.metadata.name),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn annotated_pods_are_injected_and_admitted_at_restricted_and_failures_behave_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), &[]).await;
    // The whole render, CSIDriver and webhook included, as an operator applies it.
    let deploy = render(&repo_root().join("deploy"), &["inject"]);
    cluster.apply(&deploy).unwrap_or_else(|e| panic!("the API server refused deploy/ with inject: {e}"));
    let opted_in = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    \
                    pod-security.kubernetes.io/enforce: restricted\n    vaultlet.io/inject: enabled\n";
    let elsewhere = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: elsewhere\n  labels:\n    \
                     pod-security.kubernetes.io/enforce: restricted\n";
    cluster.apply(&format!("{opted_in}---\n{elsewhere}")).unwrap();
    cluster.ensure_service_account("shop", "app").await;
    cluster.ensure_service_account("elsewhere", "app").await;

    // Down (no replica behind the Service): failurePolicy Fail refuses pods of
    // opted-in namespaces, with the webhook's name in the message...
    let (err, _) = refused_eventually(&cluster, "while-down").await;
    // (Reached through the Service's endpoints: none, as no replica is ready.)
    assert!(err.contains("failed calling webhook \"inject.vaultlet.io\"") && err.contains("no endpoints"), "{err}");
    // ...but not a pod that opts out by label, nor any pod of another namespace.
    let opted_out = pod("opted-out", "shop", serde_json::json!({}), serde_json::json!({"vaultlet.io/inject": "false"}));
    cluster.create(opted_out).await.expect("an opted-out pod is not sent to the webhook");
    let untouched = cluster.create(annotated("untouched", "elsewhere")).await.expect("not an opted-in namespace");
    assert!(untouched.spec.unwrap().volumes.unwrap_or_default().iter().all(|v| v.csi.is_none()));

    let webhook = Webhook::start(dir.path());
    call_webhook_at(&cluster, &webhook.url, &webhook.ca).await;

    // Up: the annotated pod comes out with the CSI volume, the token, their
    // mounts and the socket's group, and PodSecurity admits it at restricted.
    let injected = create_eventually(&cluster, annotated("web", "shop")).await;
    let spec = injected.spec.unwrap();
    let volumes = spec.volumes.unwrap();
    let csi = volumes.iter().find_map(|v| v.csi.as_ref()).expect("the CSI volume");
    assert_eq!((csi.driver.as_str(), csi.read_only), ("csi.vaultlet.io", Some(true)));
    let token = volumes
        .iter()
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.clone().unwrap_or_default())
        .filter_map(|s| s.service_account_token)
        .find(|t| t.audience.is_some())
        .expect("the projected token for the agent");
    assert_eq!((token.audience.as_deref(), token.expiration_seconds), (Some("vaultlet"), Some(600)));
    let mounts: Vec<(String, Option<bool>)> = spec.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| !m.mount_path.starts_with("/var/run/secrets/kubernetes.io"))
        .map(|m| (m.mount_path.clone(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        [("/run/vaultlet".to_owned(), Some(true)), ("/var/run/secrets/vaultlet".to_owned(), Some(true))]
    );
    assert!(spec.security_context.unwrap().supplemental_groups.unwrap().contains(&10750));

    // A pod without the annotation is admitted as it is.
    let plain = cluster.create(pod("plain", "shop", serde_json::json!({}), serde_json::json!({}))).await.unwrap();
    assert!(plain.spec.unwrap().volumes.unwrap_or_default().iter().all(|v| v.csi.is_none()));

    // The old way, a hostPath to the socket directory, is refused by PodSecurity.
    let mut host = annotated("host", "shop");
    let host_spec = host.spec.as_mut().unwrap();
    host_spec.volumes = Some(vec![
        serde_json::from_value(serde_json::json!({"name": "socket", "hostPath": {"path": "/run/vaultlet"}})).unwrap(),
    ]);
    host_spec.containers[0].volume_mounts =
        Some(vec![serde_json::from_value(serde_json::json!({"name": "socket", "mountPath": "/sock"})).unwrap()]);
    let err = cluster.create(host).await.unwrap_err().to_string();
    assert!(err.contains("violates PodSecurity") && err.contains("hostPath"), "{err}");

    // A bad annotation: refused, the message naming it.
    let bad = pod("bad", "shop", serde_json::json!({"vaultlet.io/inject": "yes"}), serde_json::json!({}));
    let err = cluster.create(bad).await.unwrap_err().to_string();
    assert!(err.contains("denied the request") && err.contains("annotation vaultlet.io/inject: \"yes\""), "{err}");
    let bad = pod(
        "bad-containers",
        "shop",
        serde_json::json!({"vaultlet.io/inject": "true", "vaultlet.io/inject-containers": "db"}),
        serde_json::json!({}),
    );
    let err = cluster.create(bad).await.unwrap_err().to_string();
    assert!(err.contains("vaultlet.io/inject-containers") && err.contains("\"db\""), "{err}");

    // Slow: a webhook that accepts and never answers. The API server gives up
    // after timeoutSeconds (5) and, failing closed, refuses the pod.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_url = format!("https://{}/mutate", hung.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = hung.accept().await {
            held.push(conn);
        }
    });
    call_webhook_at(&cluster, &hung_url, &webhook.ca).await;
    let (err, waited) = refused_eventually(&cluster, "while-slow").await;
    assert!(err.contains("failed calling webhook \"inject.vaultlet.io\""), "{err}");
    assert!(waited >= Duration::from_secs(4) && waited < Duration::from_secs(30), "refused after {waited:?}: {err}");
    held.abort();
}
