//! The attacks of the security review, each tried as a tenant would and each
//! shown to fail: a ciphertext replayed in a Secret of the attacker's making,
//! a watch that outlives its access, a legacy Secret served outside its
//! migration window. Real OpenBao, the agent as a separate process.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use secrecy::ExposeSecret;
use vaultlet_client::{Code, Event, EventKind, WatchStream};
use vaultlet_tests::cluster::SignedToken;
use vaultlet_tests::events::{next_within, value};
use vaultlet_tests::lagging_cache::LaggingCache;
use vaultlet_tests::stack::{App, Stack};

async fn next(events: &mut WatchStream) -> Event {
    next_within(events, Duration::from_secs(15)).await
}

/// The error a watch ends with; fails if an event comes first.
async fn ended_with(events: &mut WatchStream) -> vaultlet_client::Error {
    match tokio::time::timeout(Duration::from_secs(15), events.next()).await {
        Ok(Some(Err(e))) => e,
        Ok(Some(Ok(e))) => panic!("a {:?} event (revision {}) reached a revoked subscriber", e.kind, e.secret.revision),
        Ok(None) => panic!("the stream ended without a status"),
        Err(_) => panic!("the watch was not ended within 15 s"),
    }
}

/// A copy of `from`'s data in a new managed Secret `ns/name` that lets `sa` read
/// it, made the way a tenant with write access to its own namespace would.
async fn copy_into(stack: &Stack, from: &Secret, ns: &str, name: &str, sa: &str, data: BTreeMap<String, ByteString>) {
    stack.kube.ensure_namespace(ns).await;
    let mut copy = Secret::default();
    copy.metadata.namespace = Some(ns.into());
    copy.metadata.name = Some(name.into());
    copy.metadata.labels = from.metadata.labels.clone();
    let mut annotations = from.metadata.annotations.clone().unwrap_or_default();
    annotations.insert("vaultlet.io/allowed-service-accounts".into(), sa.into());
    copy.metadata.annotations = Some(annotations);
    copy.data = Some(data);
    stack.kube.create(copy).await.expect("the copier may write Secrets of its own namespace");
}

/// Waits until `app`'s call of `reference` no longer says the Secret is
/// unknown or the agent starting, and returns its error (it must fail).
async fn refusal(stack: &Stack, app: &App, reference: &str) -> vaultlet_client::Error {
    let client = stack.client(app).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client.get_secrets([reference]).await {
            Ok(got) => panic!("{reference} served to {}: {:?}", app.service_account, got.keys().collect::<Vec<_>>()),
            // Not seen yet (or the agent still starting): ask again.
            Err(e)
                if matches!(e.code(), Code::PermissionDenied | Code::Unavailable)
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => return e,
        }
    }
}

/// Puts into `app`'s token file a token of its pod that expires in `seconds`,
/// as kubelet's is between two rotations.
async fn expiring_token(stack: &Stack, app: &App, seconds: i64) {
    let token = stack
        .kube
        .sign_token(SignedToken {
            namespace: &app.namespace,
            service_account: &app.service_account,
            pod: Some(&app.pod),
            audiences: &["vaultlet"],
            expires_in: seconds,
            node_info: true,
        })
        .await;
    std::fs::write(&app.token_file, &token).unwrap();
}

/// Kubelet's rotation: a token of `app`'s pod valid for an hour in its file.
async fn rotate_token(stack: &Stack, app: &App) {
    let pod = Some(app.pod.as_str());
    let token = stack.kube.token(&app.namespace, &app.service_account, pod, &["vaultlet"], Duration::from_secs(3600));
    std::fs::write(&app.token_file, token.await).unwrap();
}

/// The audit log's first `revoked` record, once there is one; fails after 20 s.
async fn first_revoked(stack: &Stack) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let audit = std::fs::read_to_string(stack.audit_log()).unwrap();
        let found = audit
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|r| r["decision"] == "revoked");
        match found {
            Some(r) => return r,
            None if std::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            None => panic!("no watch was ended (no revoked record) within 20 s"),
        }
    }
}

/// Swaps the policy file for one holding `text`, as a ConfigMap update does.
fn swap_policy(stack: &Stack, policy: &std::path::Path, text: &str) {
    let next_file = stack.dir.path().join(".policy.yaml.new");
    std::fs::write(&next_file, text).unwrap();
    std::fs::rename(&next_file, policy).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ciphertext_copied_into_another_secret_or_data_key_does_not_decrypt() {
    let stack = Stack::start(&["shop"]).await;
    // The thief's namespace is even in the migration window: a bound
    // ciphertext stripped of its binding still needs its context.
    let _agent = stack.start_agent(&["--peer-binding", "off", "--allow-unbound-namespaces", "evil"]);
    let web = stack.app("shop", "web", "web-1").await;
    stack.seal("shop", "db", "shop", "web", r#"{"password":"the-crown-jewels"}"#);
    stack.wait_readable(&web, "db").await;
    let original: Secret = stack.kube.get("shop", "db").await.unwrap();
    let data = original.data.clone().unwrap();

    // Into another namespace, as its own service account's Secret.
    let thief = stack.app("evil", "thief", "thief-1").await;
    copy_into(&stack, &original, "evil", "loot", "thief", data.clone()).await;
    let err = refusal(&stack, &thief, "loot").await;
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("decrypts only in the Secret and data key it was sealed for"), "{err}");

    // Into another name of the same namespace, by a service account there.
    let insider = stack.app("shop", "insider", "insider-1").await;
    copy_into(&stack, &original, "shop", "copy", "insider", data.clone()).await;
    let err = refusal(&stack, &insider, "copy").await;
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");

    // Into another data key of the Secret itself: that revision does not
    // decode (the last good one stays served, without the new key).
    let client = stack.client(&web).await;
    let mut events = client.watch(["db"]).unwrap();
    assert_eq!(next(&mut events).await.kind, EventKind::Snapshot);
    let mut moved = original.clone();
    let ct = data["secrets.json"].clone();
    moved.data.as_mut().unwrap().insert("other.json".into(), ct);
    stack.kube.replace(moved).await.unwrap();
    let e = next(&mut events).await;
    assert_eq!(e.kind, EventKind::Error);
    let message = &e.error.as_ref().unwrap().message;
    assert!(message.starts_with("other.json:") && message.contains("sealed for"), "{message}");
    let err = client.get_secrets(["db:other.json"]).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");

    // Stripped of its binding annotation, in a namespace of the migration window.
    let mut unbound = original.clone();
    unbound.metadata.annotations.as_mut().unwrap().remove("vaultlet.io/binding");
    copy_into(&stack, &unbound, "evil", "loot-unbound", "thief", data).await;
    let err = refusal(&stack, &thief, "loot-unbound").await;
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");

    // Nothing of the value anywhere the thief or the operator's log can see.
    let log = std::fs::read_to_string(stack.agent_log()).unwrap();
    assert!(!log.contains("the-crown-jewels"));
    assert!(!err.to_string().contains("the-crown-jewels"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_ends_before_the_new_value_when_the_annotation_drops_its_service_account() {
    let stack = Stack::start(&["shop"]).await;
    let _agent = stack.start_agent(&["--peer-binding", "off"]);
    let web = stack.app("shop", "web", "web-1").await;
    stack.seal("shop", "db", "shop", "web", r#"{"password":"old"}"#);
    stack.wait_readable(&web, "db").await;
    let mut events = stack.client(&web).await.watch(["db"]).unwrap();
    assert_eq!(value(&next(&mut events).await, "password"), "old");

    // The operator re-seals new content for another service account only.
    stack.seal("shop", "db", "shop", "other", r#"{"password":"new-for-other-eyes"}"#);
    let err = ended_with(&mut events).await;
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.to_string().contains("access revoked"), "{err}");
    assert!(!err.to_string().contains("new-for-other-eyes"));

    // The end is audited.
    let audit = std::fs::read_to_string(stack.audit_log()).unwrap();
    let revoked: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["decision"] == "revoked")
        .collect();
    assert_eq!(revoked.len(), 1, "{audit}");
    assert_eq!(revoked[0]["caller"], "shop/web");
    assert_eq!(revoked[0]["status"], "PERMISSION_DENIED");
    assert!(revoked[0]["reason"].as_str().unwrap().contains("does not list web"), "{}", revoked[0]);
    // In the terms of the call that opened the watch (made again from what the stream keeps).
    let opened = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["method"] == "WatchSecrets" && r["decision"] == "allowed")
        .expect("the watch's opening record");
    for field in ["method", "caller", "pod", "pod_uid", "peer_pid", "peer_uid", "binding", "secrets", "unbound"] {
        assert_eq!(revoked[0][field], opened[field], "{field}: {} against {opened}", revoked[0]);
    }
    assert_eq!(opened["secrets"], serde_json::json!(["shop/db"]), "{opened}");
}

/// With several API servers, the one whose watch announced a change may be
/// ahead of the one whose cache answers the agent's read of it. A secret
/// rotated after a leak must not come back from that cache: the agent keeps a
/// cached read only at the announced revision and reads anything else again
/// from etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_api_server_cache_never_rolls_a_secret_back() {
    let stack = Stack::start(&["shop"]).await;
    let cache = LaggingCache::start(&stack.kube.cp.dir, stack.kube.cp.port()).await;
    stack.route_agent_to(cache.port());
    let _agent = stack.start_agent(&["--peer-binding", "off"]);
    let web = stack.app("shop", "web", "web-1").await;
    stack.seal("shop", "db", "shop", "web", r#"{"password":"leaked"}"#);
    let leaked: Secret = stack.kube.get("shop", "db").await.unwrap();
    stack.wait_readable(&web, "db").await;
    let mut events = stack.client(&web).await.watch(["db"]).unwrap();
    assert_eq!(value(&next(&mut events).await, "password"), "leaked");
    stack.seal("shop", "db", "shop", "web", r#"{"password":"rotated"}"#);
    assert_eq!(value(&next(&mut events).await, "password"), "rotated");

    // From here the cache answers with the leaked revision, and the operator rotates again.
    cache.lag_at(&leaked);
    stack.seal("shop", "db", "shop", "web", r#"{"password":"rotated-again"}"#);
    assert_eq!(value(&next(&mut events).await, "password"), "rotated-again");
    assert!(cache.quorum_reads() > 0, "the change was read past the lagging cache");
    let got = stack.client(&web).await.get_secrets(["db"]).await.unwrap();
    assert_eq!(got["db"].values["password"].expose_secret(), "rotated-again");
}

/// A grant that goes ends the watch at once, before the Secret's new value
/// can even be loaded: here OpenBao hangs, so no new state follows the edit
/// for as long as the attacker's stream stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_ends_when_its_grant_goes_even_while_openbao_hangs() {
    let stack = Stack::start(&["shop"]).await;
    let _agent = stack.start_agent(&["--peer-binding", "off"]);
    let web = stack.app("shop", "web", "web-1").await;
    stack.seal("shop", "db", "shop", "web", r#"{"password":"old"}"#);
    stack.seal("shop", "next", "shop", "other", r#"{"password":"new-for-other-eyes"}"#);
    stack.wait_readable(&web, "db").await;
    let mut events = stack.client(&web).await.watch(["db"]).unwrap();
    assert_eq!(value(&next(&mut events).await, "password"), "old");

    stack.bao.hang();
    // New data (which only OpenBao could decrypt) and a grant for another
    // service account only, in one write.
    let next_data = stack.kube.get::<Secret>("shop", "next").await.unwrap().data;
    let mut secret: Secret = stack.kube.get("shop", "db").await.unwrap();
    secret.data = next_data;
    secret.metadata.annotations.as_mut().unwrap().insert("vaultlet.io/allowed-service-accounts".into(), "other".into());
    stack.kube.replace(secret).await.unwrap();
    let err = ended_with(&mut events).await;
    stack.bao.resume();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(!err.to_string().contains("new-for-other-eyes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_annotation_edit_alone_ends_the_watch() {
    let stack = Stack::start(&["shop"]).await;
    let _agent = stack.start_agent(&["--peer-binding", "off"]);
    let web = stack.app("shop", "web", "web-1").await;
    stack.seal("shop", "db", "shop", "web", r#"{"password":"p"}"#);
    // Another Secret that says the same: the agent keeps one shared copy of
    // an annotation's value, which the edit below must not change for it.
    stack.seal("shop", "cache", "shop", "web", r#"{"password":"c"}"#);
    stack.wait_readable(&web, "db").await;
    stack.wait_readable(&web, "cache").await;
    let mut events = stack.client(&web).await.watch(["db"]).unwrap();
    next(&mut events).await;
    let mut secret: Secret = stack.kube.get("shop", "db").await.unwrap();
    secret.metadata.annotations.as_mut().unwrap().insert("vaultlet.io/allowed-service-accounts".into(), "other".into());
    stack.kube.replace(secret).await.unwrap();
    assert_eq!(ended_with(&mut events).await.code(), Code::PermissionDenied);
    let client = stack.client(&web).await;
    assert_eq!(client.get_secrets(["db"]).await.expect_err("db no longer lists web").code(), Code::PermissionDenied);
    let got = client.get_secrets(["cache"]).await.expect("cache still lists web");
    assert_eq!(got["cache"].values["password"].expose_secret(), "c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_file_reload_ends_the_watches_it_no_longer_grants() {
    let stack = Stack::start(&["shop"]).await;
    let policy = stack.dir.path().join("policy.yaml");
    std::fs::write(&policy, "grants:\n  - from: [payments/api]\n    secrets: [shop/db]\n").unwrap();
    let _agent = stack.start_agent(&["--peer-binding", "off", "--policy-file", policy.to_str().unwrap()]);
    let api = stack.app("payments", "api", "api-1").await;
    stack.kube.ensure_namespace("shop").await;
    stack.seal("shop", "db", "shop", "web", r#"{"password":"p"}"#);
    stack.wait_readable(&api, "shop/db").await;
    let mut events = stack.client(&api).await.watch(["shop/db"]).unwrap();
    assert_eq!(next(&mut events).await.kind, EventKind::Snapshot);

    swap_policy(&stack, &policy, "grants: []\n");
    let err = ended_with(&mut events).await;
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    let err = stack.client(&api).await.get_secrets(["shop/db"]).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "new calls too: {err}");
}

/// A stream woken by its secret's changes skips the checks every stream shares
/// while they have not fired: a token's expiry and a policy reload still end
/// one that has had changes since it opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_that_has_had_changes_still_ends_at_its_tokens_expiry_and_at_a_policy_reload() {
    let stack = Stack::start(&["shop"]).await;
    let policy = stack.dir.path().join("policy.yaml");
    std::fs::write(&policy, "grants:\n  - from: [payments/api]\n    secrets: [shop/db]\n").unwrap();
    let _agent = stack.start_agent(&["--peer-binding", "off", "--policy-file", policy.to_str().unwrap()]);
    let (api, expiring) = (stack.app("payments", "api", "api-1").await, stack.app("payments", "api", "api-2").await);
    stack.kube.ensure_namespace("shop").await;
    stack.seal("shop", "db", "shop", "web", r#"{"v":"1"}"#);
    stack.wait_readable(&api, "shop/db").await;
    expiring_token(&stack, &expiring, 8).await;
    let mut events = stack.client(&api).await.watch(["shop/db"]).unwrap();
    let mut expiring_events = stack.client(&expiring).await.watch(["shop/db"]).unwrap();
    for e in [&mut events, &mut expiring_events] {
        assert_eq!(next(e).await.kind, EventKind::Snapshot);
    }
    for v in ["2", "3"] {
        stack.seal("shop", "db", "shop", "web", &format!(r#"{{"v":"{v}"}}"#));
        for e in [&mut events, &mut expiring_events] {
            let changed = next(e).await;
            assert_eq!((changed.kind, value(&changed, "v").as_str()), (EventKind::ContentChanged, v));
        }
    }

    // api-2's token expires (kubelet has rotated the file): its watch is ended.
    rotate_token(&stack, &expiring).await;
    let revoked = first_revoked(&stack).await;
    assert_eq!(
        (revoked["pod"].as_str(), revoked["status"].as_str()),
        (Some("payments/api-2"), Some("UNAUTHENTICATED"))
    );
    assert!(revoked["reason"].as_str().unwrap().contains("expired"), "{revoked}");

    // The policy no longer grants shop/db: api-1's watch ends, with no value after.
    swap_policy(&stack, &policy, "grants: []\n");
    let err = ended_with(&mut events).await;
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secret_deleted_and_created_again_for_someone_else_ends_the_watch() {
    let stack = Stack::start(&["shop"]).await;
    let _agent = stack.start_agent(&["--peer-binding", "off"]);
    let web = stack.app("shop", "web", "web-1").await;
    stack.seal("shop", "db", "shop", "web", r#"{"password":"mine"}"#);
    stack.wait_readable(&web, "db").await;
    let mut events = stack.client(&web).await.watch(["db"]).unwrap();
    next(&mut events).await;

    // Deleted: the subscriber may learn that much.
    stack.kube.delete::<Secret>("shop", "db").await.unwrap();
    assert_eq!(next(&mut events).await.kind, EventKind::Deleted);
    // Created again by someone else, for someone else.
    stack.seal("shop", "db", "shop", "other", r#"{"password":"theirs"}"#);
    assert_eq!(ended_with(&mut events).await.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_legacy_secret_is_refused_until_bound_and_its_old_ciphertext_after() {
    let stack = Stack::start(&["shop"]).await;
    // Sealed the way vaultlet did before bindings: a key that is not derived,
    // no context, no binding annotation.
    stack.bao.must(&["write", "-f", "transit/keys/legacy"]);
    let plain = base64(br#"{"password":"legacy"}"#);
    let old_ct =
        stack.bao.must(&["write", "-field=ciphertext", "transit/encrypt/legacy", &format!("plaintext={plain}")]);
    let old_ct = old_ct.trim().to_owned();
    stack.kube.ensure_namespace("shop").await;
    let mut secret = Secret::default();
    secret.metadata.namespace = Some("shop".into());
    secret.metadata.name = Some("db".into());
    secret.metadata.labels = Some([("vaultlet.io/managed".to_owned(), "true".to_owned())].into());
    secret.metadata.annotations = Some(
        [
            ("vaultlet.io/transit-key".to_owned(), "legacy".to_owned()),
            ("vaultlet.io/allowed-service-accounts".to_owned(), "web".to_owned()),
        ]
        .into(),
    );
    secret.data = Some([("secrets.json".to_owned(), ByteString(old_ct.clone().into_bytes()))].into());
    stack.kube.create(secret).await.unwrap();
    let web = stack.app("shop", "web", "web-1").await;
    // The agent may decrypt with the new key too (setup.sh would be rerun).
    stack.openbao_setup(&["shop", "legacy", "legacy-bound"]);

    // Outside the migration window: refused, naming the way out.
    let mut agent = stack.start_agent(&["--peer-binding", "off"]);
    let err = refusal(&stack, &web, "db").await;
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("vaultlet recrypt --bind"), "{err}");
    agent.kill();

    // In the window: served, and each read audited as unbound.
    let mut agent = stack.start_agent(&["--peer-binding", "off", "--allow-unbound-namespaces", "shop"]);
    stack.wait_readable(&web, "db").await;
    let got = stack.client(&web).await.get_secrets(["db"]).await.unwrap();
    assert_eq!(got["db"].values["password"].expose_secret(), "legacy");
    let audit = std::fs::read_to_string(stack.audit_log()).unwrap();
    let last: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(last["unbound"][0], "shop/db", "{last}");

    // The migration: idempotent, and it says what it did.
    let out = stack.vaultlet(&["recrypt", "--bind", "--namespace", "shop"], None);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        report.contains("shop/db: bound 1 data key(s) to derived key legacy-bound (was legacy, unbound)"),
        "{report}"
    );
    assert!(report.contains("1 secret(s) bound, 0 already bound, 0 failed"), "{report}");
    let again = stack.vaultlet(&["recrypt", "--bind", "--namespace", "shop"], None);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("0 secret(s) bound, 1 already bound"),
        "a rerun changes nothing"
    );
    let bound: Secret = stack.kube.get("shop", "db").await.unwrap();
    let annotations = bound.metadata.annotations.clone().unwrap();
    assert_eq!(
        (annotations["vaultlet.io/transit-key"].as_str(), annotations["vaultlet.io/binding"].as_str()),
        ("legacy-bound", "v1")
    );
    agent.kill();

    // Out of the window again: the bound Secret is served, ...
    let mut agent = stack.start_agent(&["--peer-binding", "off"]);
    stack.wait_readable(&web, "db").await;
    let client = stack.client(&web).await;
    let got = client.get_secrets(["db"]).await.unwrap();
    assert_eq!(got["db"].values["password"].expose_secret(), "legacy");
    let mut events = client.watch(["db"]).unwrap();
    assert_eq!(next(&mut events).await.kind, EventKind::Snapshot);
    // ... and the legacy ciphertext, put back, is not: unbound ...
    let mut replayed = bound.clone();
    let annotations = replayed.metadata.annotations.as_mut().unwrap();
    annotations.remove("vaultlet.io/binding");
    annotations.insert("vaultlet.io/transit-key".into(), "legacy".into());
    replayed.data = Some([("secrets.json".to_owned(), ByteString(old_ct.into_bytes()))].into());
    stack.kube.replace(replayed).await.unwrap();
    let e = next(&mut events).await;
    assert_eq!(e.kind, EventKind::Error);
    assert!(e.error.unwrap().message.contains("not bound to it"));
    // ... nor claiming a binding under its key, which is not derived.
    let mut claimed = stack.kube.get::<Secret>("shop", "db").await.unwrap();
    claimed.metadata.annotations.as_mut().unwrap().insert("vaultlet.io/binding".into(), "v1".into());
    stack.kube.replace(claimed).await.unwrap();
    let e = next(&mut events).await;
    assert_eq!(e.kind, EventKind::Error);
    assert!(e.error.unwrap().message.contains("is not derived"));
    // A fresh agent (nothing cached) refuses it outright.
    agent.kill();
    let _agent = stack.start_agent(&["--peer-binding", "off"]);
    let err = refusal(&stack, &web, "db").await;
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("is not derived"), "{err}");
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seal_refuses_a_key_that_is_not_derived() {
    let stack = Stack::start(&["shop"]).await;
    stack.bao.must(&["write", "-f", "transit/keys/plain"]);
    stack.kube.ensure_namespace("shop").await;
    let out = stack.vaultlet(
        &["seal", "--namespace", "shop", "--name", "db", "--transit-key", "plain", "--allow", "web", "-"],
        Some(br#"{"k":"v"}"#),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not derived") && err.contains("recrypt --bind"), "{err}");
    // A key that does not exist yet is created derived.
    stack.seal("shop", "db", "fresh", "web", r#"{"k":"v"}"#);
    let key = stack.bao.must(&["read", "-format=json", "transit/keys/fresh"]);
    assert!(key.contains("\"derived\": true"), "{key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_token_ends_the_watch_and_the_client_resumes_with_the_rotated_token() {
    let stack = Stack::start(&["shop"]).await;
    let _agent = stack.start_agent(&["--peer-binding", "off"]);
    let web = stack.app("shop", "web", "web-1").await;
    stack.seal("shop", "db", "shop", "web", r#"{"v":"1"}"#);
    stack.wait_readable(&web, "db").await;
    expiring_token(&stack, &web, 4).await;
    let mut events = stack.client(&web).await.watch(["db"]).unwrap();
    let first = next(&mut events).await;
    assert_eq!((first.kind, value(&first, "v").as_str()), (EventKind::Snapshot, "1"));

    // Kubelet rotates the file before the old token expires; the watch goes on
    // with the old one until the agent ends it at expiry.
    rotate_token(&stack, &web).await;
    let revoked = first_revoked(&stack).await;
    assert_eq!(revoked["status"], "UNAUTHENTICATED", "{revoked}");
    assert!(revoked["reason"].as_str().unwrap().contains("expired"), "{revoked}");

    // The client reconnected by itself: nothing repeated, nothing lost.
    assert!(tokio::time::timeout(Duration::from_secs(1), events.next()).await.is_err(), "no event repeated");
    stack.seal("shop", "db", "shop", "web", r#"{"v":"2"}"#);
    let e = next(&mut events).await;
    assert_eq!((e.kind, value(&e, "v").as_str()), (EventKind::ContentChanged, "2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_pods_calls_and_watches_end_at_once() {
    let stack = Stack::start(&["shop"]).await;
    let _agent = stack.start_agent(&["--peer-binding", "off", "--token-review-cache-ttl", "60s"]);
    let gone = stack.app("shop", "web", "web-gone").await;
    stack.seal("shop", "db", "shop", "web", r#"{"v":"1"}"#);
    stack.wait_readable(&gone, "db").await;
    let client = stack.client(&gone).await;
    let mut events = client.watch(["db"]).unwrap();
    next(&mut events).await;

    stack.kube.force_delete_pod("shop", "web-gone").await;
    // Whatever the review cache holds (60 s here), the pod watch decides.
    let err = ended_with(&mut events).await;
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert!(err.to_string().contains("is gone"), "{err}");
    let err = client.get_secrets(["db"]).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_namespace_may_name_only_the_transit_keys_the_agent_allows_it() {
    let stack = Stack::start(&["shop", "payments"]).await;
    let _agent = stack.start_agent(&["--peer-binding", "off", "--transit-keys", "shop=shop"]);
    let web = stack.app("shop", "web", "web-1").await;
    stack.seal("shop", "db", "shop", "web", r#"{"k":"mine"}"#);
    // Another team's key, named by a Secret of this namespace.
    stack.seal("shop", "borrowed", "payments", "web", r#"{"k":"theirs"}"#);
    stack.wait_readable(&web, "db").await;
    let err = refusal(&stack, &web, "borrowed").await;
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("may not use Transit key \"payments\""), "{err}");
    assert_eq!(stack.bao.requests_to("transit/decrypt/payments"), 0, "refused before any decrypt");
}
