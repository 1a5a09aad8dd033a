//! The caller-identity matrix: every way to present a token that is not the
//! caller's own, each its own test and refused with the right status and an
//! audit record; the rightful caller served; the audit log verifiable.
//!
//! Clients run as separate processes (`vaultlet get`) inside real cgroups whose
//! paths name their pods, so the agent's peer binding sees what it would see
//! under kubelet.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use vaultlet_tests::agent::{AgentProcess, vaultlet_bin};
use vaultlet_tests::cgroup::PodCgroup;
use vaultlet_tests::cluster::SignedToken;
use vaultlet_tests::stack::{App, Stack};

/// `vaultlet get REF` with `token_file`, from a process of the pod `pod_uid`
/// (or from outside any pod).
fn get_as(stack: &Stack, pod_uid: Option<&str>, token_file: &Path, reference: &str) -> Output {
    let socket = stack.socket();
    let args = ["get", "--socket", socket.to_str().unwrap(), "--token-file", token_file.to_str().unwrap(), reference];
    let cgroup = pod_uid.map(PodCgroup::create);
    let mut cmd = match &cgroup {
        Some(cg) => cg.command(&vaultlet_bin(), &args),
        None => {
            let mut c = std::process::Command::new(vaultlet_bin());
            c.args(args);
            c
        }
    };
    cmd.env("VAULTLET_LOG", "warn").output().expect("run vaultlet get")
}

fn expect(out: &Output, code: &str, words: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected {code}, but the call succeeded");
    assert!(err.contains(code), "expected {code}: {err}");
    assert!(err.contains(words), "expected {words:?} in: {err}");
}

fn ok(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn write_token(stack: &Stack, name: &str, token: &str) -> PathBuf {
    let path = stack.dir.path().join(name);
    std::fs::write(&path, token).unwrap();
    path
}

/// One row's world: an agent on node-1 (review cache 2 s), the pod `web-1` of
/// `shop/web`, and the Secret `shop/db` whose annotation allows `web`.
struct Matrix {
    stack: Stack,
    _agent: AgentProcess,
    web: App,
}

impl Matrix {
    async fn start() -> Matrix {
        let stack = Stack::start(&["shop"]).await;
        let agent = stack.start_agent(&["--token-review-cache-ttl", "2s"]);
        let web = stack.app("shop", "web", "web-1").await;
        stack.seal("shop", "db", "shop", "web", r#"{"password":"p"}"#);
        let matrix = Matrix { stack, _agent: agent, web };
        matrix.wait_served(&matrix.web, "db");
        matrix
    }

    /// Waits until the agent's watch has delivered `reference` and serves it to `app`.
    fn wait_served(&self, app: &App, reference: &str) {
        let before = self.audit().len();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut calls = 0;
        let out = loop {
            let out = get_as(&self.stack, Some(&app.pod_uid), &app.token_file, reference);
            calls += 1;
            if out.status.success() || std::time::Instant::now() > deadline {
                break out;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.settled(before + calls);
        ok(&out);
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.stack.audit_log()).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// The audit log once it holds `records` records (the writer drains every
    /// few milliseconds): every helper here leaves it settled, so each row
    /// counts from an exact start.
    fn settled(&self, records: usize) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let audit = self.audit();
            if audit.len() >= records || std::time::Instant::now() > deadline {
                assert_eq!(audit.len(), records, "one decision, one record: {audit:?}");
                return audit;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `vaultlet get REF` as `get_as` runs it, and the one audit record the
    /// call left, after checking that the record holds neither the token
    /// presented nor a value.
    fn audited(&self, pod_uid: Option<&str>, token_file: &Path, reference: &str) -> (Output, serde_json::Value) {
        let before = self.audit().len();
        let out = get_as(&self.stack, pod_uid, token_file, reference);
        let record = self.settled(before + 1)[before].clone();
        let text = record.to_string();
        assert!(!text.contains("\"p\""), "a value reached the audit log: {text}");
        let token = std::fs::read_to_string(token_file).unwrap_or_default();
        assert!(token.trim().is_empty() || !text.contains(token.trim()), "a token reached the audit log");
        (out, record)
    }

    /// A call of `reference` from the pod `pod_uid` (or outside any pod) with
    /// `token_file`, refused with `code` and `words`; its audit record.
    fn refused(
        &self,
        pod_uid: Option<&str>,
        token_file: &Path,
        reference: &str,
        code: &str,
        words: &str,
    ) -> serde_json::Value {
        let (out, record) = self.audited(pod_uid, token_file, reference);
        expect(&out, code, words);
        let decision = if code == "PERMISSION_DENIED" { "denied" } else { "unauthenticated" };
        assert_eq!(record["decision"], decision, "{record}");
        // A denial's record names the missing rule; the caller is not told
        // (nor whether the secret exists).
        let reason = record["reason"].as_str().expect("a refusal has a reason");
        assert!(decision != "denied" || !String::from_utf8_lossy(&out.stderr).contains(reason), "{record}");
        record
    }

    /// `web`'s own process presenting the token in `token_file` for `db`.
    fn refused_from_web(&self, token_file: &Path, code: &str, words: &str) -> serde_json::Value {
        self.refused(Some(&self.web.pod_uid), token_file, "db", code, words)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rightful_caller_is_served() {
    let m = Matrix::start().await;
    let (out, record) = m.audited(Some(&m.web.pod_uid), &m.web.token_file, "db");
    assert_eq!(ok(&out)["db"]["password"], "p");
    assert_eq!(record["decision"], "allowed", "{record}");
    assert_eq!(record["caller"], "shop/web");
    assert_eq!(record["pod"], "shop/web-1");
    assert_eq!(record["secrets"][0], "shop/db");
    assert!(record["peer_pid"].as_i64().is_some(), "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_token_is_unauthenticated() {
    let m = Matrix::start().await;
    let none = m.stack.dir.path().join("no-such-token");
    m.refused_from_web(&none, "UNAUTHENTICATED", "no ServiceAccount token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_for_another_audience_is_unauthenticated() {
    let m = Matrix::start().await;
    let vault_aud = m.stack.kube.token("shop", "web", Some("web-1"), &["vault"], Duration::from_secs(600)).await;
    let f = write_token(&m.stack, "token-aud", &vault_aud);
    m.refused_from_web(&f, "UNAUTHENTICATED", "not for audience \"vaultlet\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_token_is_unauthenticated() {
    let m = Matrix::start().await;
    let expired = m
        .stack
        .kube
        .sign_token(SignedToken {
            namespace: "shop",
            service_account: "web",
            pod: Some("web-1"),
            audiences: &["vaultlet"],
            expires_in: -3600,
            node_info: true,
        })
        .await;
    let f = write_token(&m.stack, "token-expired", &expired);
    m.refused_from_web(&f, "UNAUTHENTICATED", "expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_signature_is_unauthenticated() {
    let m = Matrix::start().await;
    // A valid token's claims with a signature that does not match.
    let valid = std::fs::read_to_string(&m.web.token_file).unwrap();
    let mut parts: Vec<String> = valid.trim().split('.').map(str::to_owned).collect();
    parts[2] = parts[2].chars().rev().collect();
    let f = write_token(&m.stack, "token-forged", &parts.join("."));
    m.refused_from_web(&f, "UNAUTHENTICATED", "refused the token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_of_pod_a_from_a_process_of_pod_b_is_unauthenticated() {
    let m = Matrix::start().await;
    // Same service account even: only the pod differs.
    let other = m.stack.app("shop", "web", "web-2").await;
    m.refused(Some(&other.pod_uid), &m.web.token_file, "db", "UNAUTHENTICATED", "not in that pod");
}

/// One `GetSecrets(reference)` from a process of pod `pod_uid`, with exactly
/// the metadata `headers`: raw gRPC from the Python stubs, since the clients
/// choose the token's header themselves (`authorization` on a connection's
/// first call, `vaultlet-token` once the agent announces it). "OK", or the
/// status code's name and message.
fn get_with_headers(stack: &Stack, pod_uid: &str, headers: &[(&str, &str)], reference: &str) -> String {
    const CALL: &str = r#"
import json, sys, grpc
from vaultlet.connection import CHANNEL_OPTIONS
from vaultlet.v1 import secrets_pb2, secrets_pb2_grpc
socket, reference, headers = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
channel = grpc.insecure_channel("unix://" + socket, options=CHANNEL_OPTIONS)
stub = secrets_pb2_grpc.SecretsStub(channel)
request = secrets_pb2.GetSecretsRequest(refs=[secrets_pb2.SecretRef(name=reference)])
try:
    stub.GetSecrets(request, metadata=[tuple(h) for h in headers], timeout=10)
    print("OK")
except grpc.RpcError as e:
    print(e.code().name, e.details())
"#;
    let python = vaultlet_tests::stack::repo_root().join(".venv/bin/python");
    let socket = stack.socket();
    let headers = serde_json::to_string(headers).unwrap();
    let cgroup = PodCgroup::create(pod_uid);
    let out = cgroup
        .command(&python, &["-c", CALL, socket.to_str().unwrap(), reference, &headers])
        .output()
        .expect("run the Python client's stubs (scripts/venv)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The token under `vaultlet-token` (the header HPACK indexes) meets every
/// check `authorization` does: a stolen one from another pod is refused, and
/// a call may not carry two tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_indexed_token_header_is_checked_as_authorization_is() {
    let m = Matrix::start().await;
    let token = std::fs::read_to_string(&m.web.token_file).unwrap();
    let token = token.trim();
    let bearer = format!("Bearer {token}");
    // The rightful pod, the token under the indexed header: served.
    let before = m.audit().len();
    assert_eq!(get_with_headers(&m.stack, &m.web.pod_uid, &[("vaultlet-token", token)], "db"), "OK");
    assert_eq!(m.settled(before + 1)[before]["decision"], "allowed");

    // The same token from a process of another pod: refused before any review.
    let other = m.stack.app("shop", "web", "web-2").await;
    let before = m.audit().len();
    let answer = get_with_headers(&m.stack, &other.pod_uid, &[("vaultlet-token", token)], "db");
    assert!(answer.starts_with("UNAUTHENTICATED") && answer.contains("not in that pod"), "{answer}");
    assert_eq!(m.settled(before + 1)[before]["decision"], "unauthenticated");

    // Two tokens in one call (which would one check?): refused.
    let before = m.audit().len();
    let both = [("vaultlet-token", token), ("authorization", bearer.as_str())];
    let answer = get_with_headers(&m.stack, &m.web.pod_uid, &both, "db");
    assert!(answer.starts_with("UNAUTHENTICATED") && answer.contains("two tokens"), "{answer}");
    assert_eq!(m.settled(before + 1)[before]["decision"], "unauthenticated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_outside_any_pod_is_refused_when_it_connects() {
    let m = Matrix::start().await;
    let reviews = m.stack.metric("vaultlet_token_reviews_total");
    let before = m.audit().len();
    let out = get_as(&m.stack, None, &m.web.token_file, "db");
    // The connection is closed as soon as it is accepted: the client hears no
    // status of the agent's, only that the connection went (UNAVAILABLE,
    // CANCELLED or a transport error, depending on when it notices).
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("vaultlet get:"), "{err}");
    std::thread::sleep(Duration::from_millis(300));
    // One record per connection the client tried (it may try again at once).
    let records: Vec<_> = m.audit().into_iter().skip(before).collect();
    assert!(!records.is_empty(), "a refused connection is audited");
    for record in &records {
        assert_eq!(
            (record["method"].as_str(), record["decision"].as_str()),
            (Some("connect"), Some("refused")),
            "{record}"
        );
        assert!(record["reason"].as_str().unwrap().contains("not in any pod"), "{record}");
        assert!(record.get("caller").is_none(), "an unauthenticated caller is not named: {record}");
        assert!(record["peer_pid"].as_i64().is_some(), "{record}");
    }
    assert_eq!(m.stack.metric("vaultlet_token_reviews_total"), reviews, "its token was never reviewed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_on_another_node_is_unauthenticated() {
    let m = Matrix::start().await;
    let remote = m.stack.app_on("shop", "web", "web-remote", "node-2").await;
    m.refused(Some(&remote.pod_uid), &remote.token_file, "db", "UNAUTHENTICATED", "does not run on this node");
}

/// Clusters before Kubernetes 1.30 put no node in pod-bound tokens, so
/// TokenReview does not name it: the agent's watch of this node's pods decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_node_info_in_tokens_the_pod_watch_binds_callers_to_this_node() {
    let m = Matrix::start().await;
    // Tokens as a 1.29 API server issued them: signed with the cluster's key,
    // reviewed by the real API server, which then names no node.
    let older = |pod: &'static str| SignedToken {
        namespace: "shop",
        service_account: "web",
        pod: Some(pod),
        audiences: &["vaultlet"],
        expires_in: 3600,
        node_info: false,
    };
    let token = m.stack.kube.sign_token(older("web-1")).await;
    let review = m.stack.kube.review(&token, &["vaultlet"]).await;
    assert_eq!(review.authenticated, Some(true), "{review:?}");
    let extra = review.user.and_then(|u| u.extra).unwrap_or_default();
    assert!(extra.contains_key("authentication.kubernetes.io/pod-uid"), "{extra:?}");
    assert!(!extra.contains_key("authentication.kubernetes.io/node-name"), "{extra:?}");
    let f = write_token(&m.stack, "token-older", &token);
    let (out, record) = m.audited(Some(&m.web.pod_uid), &f, "db");
    assert_eq!(ok(&out)["db"]["password"], "p");
    assert_eq!(record["decision"], "allowed", "{record}");

    let remote = m.stack.app_on("shop", "web", "web-remote", "node-2").await;
    let f = write_token(&m.stack, "token-older-remote", &m.stack.kube.sign_token(older("web-remote")).await);
    m.refused(Some(&remote.pod_uid), &f, "db", "UNAUTHENTICATED", "does not run on this node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_terminating_pod_is_served_and_a_gone_one_refused_at_once() {
    let m = Matrix::start().await;
    let gone = m.stack.app("shop", "web", "web-gone").await;
    m.wait_served(&gone, "db");
    // Deleted: with no kubelet to finish it, the pod stays Terminating, and
    // its processes may need their secrets while they shut down.
    m.stack.kube.delete_pod("shop", "web-gone").await;
    let pod: Pod = m.stack.kube.get("shop", "web-gone").await.expect("still there");
    assert!(pod.metadata.deletion_timestamp.is_some());
    let (out, _) = m.audited(Some(&gone.pod_uid), &gone.token_file, "db");
    ok(&out);
    // Gone (termination finished): refused at once, though the API server still
    // accepts its token for a while and our review of it is cached.
    m.stack.kube.force_delete_pod("shop", "web-gone").await;
    let review = m.stack.kube.review(std::fs::read_to_string(&gone.token_file).unwrap().trim(), &["vaultlet"]).await;
    let refused = |m: &Matrix| {
        let out = get_as(&m.stack, Some(&gone.pod_uid), &gone.token_file, "db");
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("is gone")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !refused(&m) {
        assert!(std::time::Instant::now() < deadline, "not refused within 2 s of the pod's removal");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(review.authenticated, Some(true), "the API server still vouched for the token: {review:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_account_the_secret_does_not_list_is_denied() {
    let m = Matrix::start().await;
    let worker = m.stack.app("shop", "worker", "worker-1").await;
    let record =
        m.refused(Some(&worker.pod_uid), &worker.token_file, "db", "PERMISSION_DENIED", "may not read secret shop/db");
    assert_eq!(record["caller"], "shop/worker");
    assert_eq!(record["pod"], "shop/worker-1");
    assert_eq!(record["secrets"][0], "shop/db");
    assert!(record["reason"].as_str().unwrap().contains("does not list worker"), "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secret_of_another_namespace_is_denied() {
    let m = Matrix::start().await;
    // Its annotation names `web`, but that means `web` of its own namespace.
    m.stack.kube.ensure_namespace("bank").await;
    m.stack.seal("bank", "vault", "shop", "web", r#"{"pin":"1234"}"#);
    // One that does not exist at all is refused in the same words.
    for reference in ["bank/vault", "bank/nothing"] {
        let words = format!("may not read secret {reference}");
        let record = m.refused(Some(&m.web.pod_uid), &m.web.token_file, reference, "PERMISSION_DENIED", &words);
        assert!(record["reason"].as_str().unwrap().contains("no grant of the policy file lets shop/web"), "{record}");
        assert!(!record.to_string().contains("1234"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_legacy_token_bound_to_no_pod_is_unauthenticated() {
    let m = Matrix::start().await;
    let legacy = m.stack.kube.legacy_token("shop", "web").await;
    let f = write_token(&m.stack, "token-legacy", &legacy);
    m.refused_from_web(&f, "UNAUTHENTICATED", "not bound to a pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_verify_accepts_the_chain_and_detects_a_removed_line() {
    let m = Matrix::start().await;
    let worker = m.stack.app("shop", "worker", "worker-1").await;
    for _ in 0..3 {
        m.audited(Some(&m.web.pod_uid), &m.web.token_file, "db");
        m.audited(Some(&worker.pod_uid), &worker.token_file, "db");
    }
    let audit = std::fs::read_to_string(m.stack.audit_log()).unwrap();
    let records = audit.lines().count();
    let verified = m.stack.vaultlet(&["audit", "verify", m.stack.audit_log().to_str().unwrap()], None);
    let report = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success() && report.contains(&format!("ok: {records} records")),
        "{report}{}",
        String::from_utf8_lossy(&verified.stderr)
    );

    let cut = m.stack.dir.path().join("audit-cut.log");
    let without_one: String =
        audit.lines().enumerate().filter(|(i, _)| *i != 3).map(|(_, l)| format!("{l}\n")).collect();
    std::fs::write(&cut, without_one).unwrap();
    let verified = m.stack.vaultlet(&["audit", "verify", cut.to_str().unwrap()], None);
    assert!(!verified.status.success());
    let err = String::from_utf8_lossy(&verified.stderr);
    assert!(err.contains("line 4"), "{err}");
}

/// A caller controls the text of its references, which the audit record keeps
/// even when it refuses them: one crafted as the end of an allowed record and
/// a forged next line stays inside its own record, and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reference_crafted_as_audit_json_stays_inside_its_record() {
    let m = Matrix::start().await;
    let token = std::fs::read_to_string(&m.web.token_file).unwrap();
    let forged = "db\",\"decision\":\"allowed\",\"secrets\":[\"shop/db\"]}\n\
                  {\"seq\":1,\"prev\":\"x\",\"decision\":\"allowed\",\"caller\":\"shop/web\u{1}\\";
    let before = m.audit().len();
    let answer = get_with_headers(&m.stack, &m.web.pod_uid, &[("vaultlet-token", token.trim())], forged);
    assert!(answer.starts_with("INVALID_ARGUMENT"), "{answer}");
    // Every line parses (`audit` would fail otherwise), and there is one more.
    let record = &m.settled(before + 1)[before];
    assert_eq!((record["decision"].as_str(), record["caller"].as_str()), (Some("invalid"), Some("shop/web")));
    assert_eq!(record["secrets"], serde_json::json!([format!("shop/{forged}")]), "{record}");
    let log = m.stack.audit_log();
    let verified = m.stack.vaultlet(&["audit", "verify", log.to_str().unwrap()], None);
    let report = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success() && report.contains(&format!("ok: {} records", before + 1)), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_bad_tokens_does_not_become_a_flood_of_token_reviews() {
    let stack = Stack::start(&["shop"]).await;
    let _agent = stack.start_agent(&[]);
    let web = stack.app("shop", "web", "web-1").await;
    stack.seal("shop", "db", "shop", "web", r#"{"password":"p"}"#);
    let before = stack.metric("vaultlet_token_reviews_total");

    // Garbage never reaches TokenReview; one forged token is reviewed once.
    let garbage = write_token(&stack, "garbage", "not-a-jwt");
    let valid = std::fs::read_to_string(&web.token_file).unwrap();
    let mut parts: Vec<&str> = valid.trim().split('.').collect();
    let forged_sig: String = parts[2].chars().rev().collect();
    parts[2] = &forged_sig;
    let forged = write_token(&stack, "forged", &parts.join("."));
    for _ in 0..10 {
        expect(&get_as(&stack, Some(&web.pod_uid), &garbage, "db"), "UNAUTHENTICATED", "not a JWT");
        expect(&get_as(&stack, Some(&web.pod_uid), &forged, "db"), "UNAUTHENTICATED", "refused the token");
    }
    assert_eq!(stack.metric("vaultlet_token_reviews_total") - before, 1.0, "negative cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warn_mode_lets_a_borrowed_token_through_and_records_the_violation() {
    let stack = Stack::start(&["shop"]).await;
    let _agent = stack.start_agent(&["--peer-binding", "warn"]);
    let web = stack.app("shop", "web", "web-1").await;
    let other = stack.app("shop", "web", "web-2").await;
    stack.seal("shop", "db", "shop", "web", r#"{"password":"p"}"#);
    stack.wait_readable(&web, "db").await;
    let out = get_as(&stack, Some(&other.pod_uid), &web.token_file, "db");
    assert_eq!(ok(&out)["db"]["password"], "p");
    let audit = std::fs::read_to_string(stack.audit_log()).unwrap();
    let last: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!((last["decision"].as_str(), last["binding"].as_str()), (Some("allowed"), Some("violated")), "{last}");
    // The rightful pod's own calls carry no such mark.
    let out = get_as(&stack, Some(&web.pod_uid), &web.token_file, "db");
    ok(&out);
    let audit = std::fs::read_to_string(stack.audit_log()).unwrap();
    let last: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert!(last.get("binding").is_none(), "{last}");
}
