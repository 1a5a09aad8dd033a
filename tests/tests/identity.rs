//! The caller-identity matrix: every way to present a token that is not the
//! caller's own, each refused with the right status; the rightful caller
//! served; every decision in a verifiable audit log.
//!
//! Clients run as separate processes (`vaultlet get`) inside real cgroups whose
//! paths name their pods, so the agent's peer binding sees what it would see
//! under kubelet.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use vaultlet_tests::agent::vaultlet_bin;
use vaultlet_tests::cgroup::PodCgroup;
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

fn write_token(stack: &Stack, name: &str, token: &str) -> std::path::PathBuf {
    let path = stack.dir.path().join(name);
    std::fs::write(&path, token).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_stolen_or_wrong_token_is_refused_and_audited() {
    let stack = Stack::start(&["shop"]).await;
    let _agent = stack.start_agent(&["--token-review-cache-ttl", "2s"]);
    let web: App = stack.app("shop", "web", "web-1");
    let other_web = stack.app("shop", "web", "web-2");
    let worker = stack.app("shop", "worker", "worker-1");
    let remote = stack.app_on("shop", "web", "web-remote", "node-2");
    let gone = stack.app("shop", "web", "web-gone");
    stack.seal("shop", "db", "shop", "web", r#"{"password":"p"}"#);
    vaultlet_tests::stack::ensure_namespace(&stack.kube, "bank");
    stack.seal("bank", "vault", "shop", "web", r#"{"pin":"1234"}"#);

    // The rightful caller (once the agent's watch has delivered the new Secrets).
    let mut first = get_as(&stack, Some(&web.pod_uid), &web.token_file, "db");
    for _ in 0..100 {
        if first.status.success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        first = get_as(&stack, Some(&web.pod_uid), &web.token_file, "db");
    }
    let doc = ok(&first);
    assert_eq!(doc["db"]["password"], "p");

    // No token at all.
    let none = stack.dir.path().join("no-such-token");
    expect(&get_as(&stack, Some(&web.pod_uid), &none, "db"), "UNAUTHENTICATED", "no ServiceAccount token");

    // A token for another audience.
    let vault_aud = stack.kube.mint_token("shop", "web", Some("web-1"), &["vault"], Duration::from_secs(600)).unwrap();
    let f = write_token(&stack, "aud", &vault_aud);
    expect(&get_as(&stack, Some(&web.pod_uid), &f, "db"), "UNAUTHENTICATED", "not for audience \"vaultlet\"");

    // Expired.
    let expired = stack.kube.mint_expired_token("shop", "web", Some("web-1"), &["vaultlet"]).unwrap();
    let f = write_token(&stack, "expired", &expired);
    expect(&get_as(&stack, Some(&web.pod_uid), &f, "db"), "UNAUTHENTICATED", "expired");

    // Forged: a valid token's claims with a signature that does not match.
    let valid = std::fs::read_to_string(&web.token_file).unwrap();
    let mut parts: Vec<String> = valid.trim().split('.').map(str::to_owned).collect();
    let sig = parts[2].clone();
    parts[2] = sig.chars().rev().collect();
    let f = write_token(&stack, "forged", &parts.join("."));
    expect(&get_as(&stack, Some(&web.pod_uid), &f, "db"), "UNAUTHENTICATED", "refused the token");

    // Pod A's token, replayed from a process of pod B (same service account even).
    expect(&get_as(&stack, Some(&other_web.pod_uid), &web.token_file, "db"), "UNAUTHENTICATED", "not in that pod");

    // From a process outside any pod.
    expect(&get_as(&stack, None, &web.token_file, "db"), "UNAUTHENTICATED", "not in any pod");

    // A pod of another node.
    expect(
        &get_as(&stack, Some(&remote.pod_uid), &remote.token_file, "db"),
        "UNAUTHENTICATED",
        "does not run on this node",
    );

    // A legacy, Secret-based token that is bound to no pod.
    let legacy = stack.kube.mint_legacy_token("shop", "web").unwrap();
    let f = write_token(&stack, "legacy", &legacy);
    expect(&get_as(&stack, Some(&web.pod_uid), &f, "db"), "UNAUTHENTICATED", "not bound to a pod");

    // A service account the Secret does not list.
    expect(
        &get_as(&stack, Some(&worker.pod_uid), &worker.token_file, "db"),
        "PERMISSION_DENIED",
        "may not read secret shop/db",
    );

    // A Secret of another namespace (its annotation names `web`, but of its own namespace).
    expect(
        &get_as(&stack, Some(&web.pod_uid), &web.token_file, "bank/vault"),
        "PERMISSION_DENIED",
        "may not read secret bank/vault",
    );

    // A deleted pod's token stops working within the review cache TTL (2 s).
    ok(&get_as(&stack, Some(&gone.pod_uid), &gone.token_file, "db"));
    stack.kube.delete_pod("shop", "web-gone").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    expect(&get_as(&stack, Some(&gone.pod_uid), &gone.token_file, "db"), "UNAUTHENTICATED", "refused the token");

    // Every decision is in the audit log, in a chain `audit verify` accepts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let audit = std::fs::read_to_string(stack.audit_log()).unwrap();
    let records: Vec<serde_json::Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let count = |decision: &str| records.iter().filter(|r| r["decision"] == decision).count();
    assert_eq!(count("allowed"), 2, "{audit}");
    assert_eq!(count("unauthenticated"), 9, "{audit}");
    // Two denials, plus any while the agent had not seen the new Secret yet.
    let retried = records.len() - 13;
    assert_eq!(count("denied"), 2 + retried, "{audit}");
    let denied =
        records.iter().find(|r| r["decision"] == "denied" && r["caller"] == "shop/worker").expect("worker denial");
    assert_eq!(denied["secrets"][0], "shop/db");
    assert!(denied["reason"].as_str().unwrap().contains("does not list worker"), "{denied}");
    assert_eq!(denied["pod"], "shop/worker-1");
    assert!(denied["peer_pid"].as_i64().is_some());
    let outside = records.iter().find(|r| r["reason"].as_str().is_some_and(|r| r.contains("not in any pod"))).unwrap();
    assert!(outside.get("caller").is_none(), "an unauthenticated caller is not named");
    for token in [valid.trim(), &vault_aud, &expired, &legacy] {
        assert!(!audit.contains(token), "a token reached the audit log");
    }
    assert!(!audit.contains("\"p\"") && !audit.contains("1234"));

    let verified = stack.vaultlet(&["audit", "verify", stack.audit_log().to_str().unwrap()], None);
    let report = String::from_utf8_lossy(&verified.stdout);
    let want = format!("ok: {} records", records.len());
    assert!(
        verified.status.success() && report.contains(&want),
        "{report}{}",
        String::from_utf8_lossy(&verified.stderr)
    );

    let cut = stack.dir.path().join("audit-cut.log");
    let without_one: String =
        audit.lines().enumerate().filter(|(i, _)| *i != 5).map(|(_, l)| format!("{l}\n")).collect();
    std::fs::write(&cut, without_one).unwrap();
    let verified = stack.vaultlet(&["audit", "verify", cut.to_str().unwrap()], None);
    assert!(!verified.status.success());
    assert!(
        String::from_utf8_lossy(&verified.stderr).contains("line 6"),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_bad_tokens_does_not_become_a_flood_of_token_reviews() {
    let stack = Stack::start(&["shop"]).await;
    let _agent = stack.start_agent(&[]);
    let web = stack.app("shop", "web", "web-1");
    stack.seal("shop", "db", "shop", "web", r#"{"password":"p"}"#);
    let before = stack.kube.request_count("create", "tokenreviews");

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
    assert_eq!(stack.kube.request_count("create", "tokenreviews") - before, 1, "negative cache");
}
