//! End to end, the seeds' system made real: seal -> get -> recrypt -> RECRYPTED
//! -> seal new content -> CONTENT_CHANGED -> delete -> DELETED, with only
//! ciphertext in Kubernetes, a real OpenBao and a real kube-apiserver and etcd.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use secrecy::ExposeSecret;
use vaultlet_client::{Code, Event, EventKind, WatchStream};
use vaultlet_tests::events::{next_within, value};
use vaultlet_tests::stack::Stack;

async fn next(events: &mut WatchStream) -> Event {
    next_within(events, Duration::from_secs(15)).await
}

async fn stored(stack: &Stack, ns: &str, name: &str) -> Secret {
    stack.kube.get::<Secret>(ns, name).await.expect("the Secret exists")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seal_get_recrypt_edit_delete() {
    let stack = Stack::start(&["shop"]).await;
    let _agent = stack.start_agent(&["--peer-binding", "off"]);
    let web = stack.app("shop", "web", "web-1").await;

    stack.seal("shop", "db", "shop", "web", r#"{"user":"shop","password":"first-password"}"#);
    let secret = stored(&stack, "shop", "db").await;
    let data = secret.data.as_ref().unwrap();
    let ct = std::str::from_utf8(&data["secrets.json"].0).unwrap();
    assert!(ct.starts_with("vault:v1:"), "only ciphertext in Kubernetes: {ct}");
    assert!(!ct.contains("first-password"));
    let labels = secret.metadata.labels.unwrap();
    assert_eq!(labels["vaultlet.io/managed"], "true");
    let annotations = secret.metadata.annotations.unwrap();
    assert_eq!(annotations["vaultlet.io/transit-key"], "shop");
    assert_eq!(annotations["vaultlet.io/allowed-service-accounts"], "web");

    stack.wait_readable(&web, "db").await;
    let c = stack.client(&web).await;
    let got = c.get_secrets(["db"]).await.unwrap();
    assert_eq!(got["db"].values["password"].expose_secret(), "first-password");
    assert_eq!((got["db"].key_version, got["db"].reference.namespace.as_str()), (1, "shop"));

    let mut events = c.watch(["db"]).unwrap();
    let e = next(&mut events).await;
    assert_eq!((e.kind, e.secret.key_version), (EventKind::Snapshot, 1));

    // Rotation: same values, key version + 1, pushed to the subscriber.
    let out = stack.recrypt(&["--namespace", "shop"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        report.contains("key shop: rotated to v2") && report.contains("shop/db: rewrapped 1 data key(s) to v2"),
        "{report}"
    );
    assert!(report.contains("recrypt: 1 key(s) rotated, 1 secret(s) rewrapped, 0 unchanged, 0 failed"), "{report}");
    let e = next(&mut events).await;
    assert_eq!((e.kind, e.secret.key_version), (EventKind::Recrypted, 2));
    assert_eq!(value(&e, "password"), "first-password");
    let ct = String::from_utf8(stored(&stack, "shop", "db").await.data.unwrap()["secrets.json"].0.clone()).unwrap();
    assert!(ct.starts_with("vault:v2:"), "{ct}");

    // A rerun (as after a crash halfway) rotates again and brings everything up.
    let out = stack.recrypt(&["--namespace", "shop", "--dry-run"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("would rotate to v3") && report.contains("would rewrap 1"), "{report}");

    // New content.
    stack.seal("shop", "db", "shop", "web", r#"{"user":"shop","password":"second-password"}"#);
    let e = next(&mut events).await;
    assert_eq!(e.kind, EventKind::ContentChanged);
    assert_eq!(value(&e, "password"), "second-password");

    // An annotation edit: read again (a new revision), decrypted again not at all.
    let fetches = stack.metric("vaultlet_secret_fetches_total");
    let mut edited = stored(&stack, "shop", "db").await;
    edited.metadata.annotations.as_mut().unwrap().insert("team".into(), "checkout".into());
    stack.kube.replace(edited).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stack.metric("vaultlet_secret_fetches_total") == fetches {
        assert!(std::time::Instant::now() < deadline, "the new revision was not read");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(tokio::time::timeout(Duration::from_secs(1), events.next()).await.is_err(), "no event: same values");

    // Deleted.
    stack.kube.delete::<Secret>("shop", "db").await.unwrap();
    assert_eq!(next(&mut events).await.kind, EventKind::Deleted);
    let err = c.get_secrets(["db"]).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "a caller cannot tell a deleted Secret from a forbidden one: {err}");

    // Each change was decrypted once: first read, rotation, new content.
    assert_eq!(stack.bao.requests_to("transit/decrypt/shop"), 3);

    // Nothing secret in the agent's log, even at debug level.
    let log = std::fs::read_to_string(stack.agent_log()).unwrap();
    let token = std::fs::read_to_string(&web.token_file).unwrap();
    for needle in ["first-password", "second-password", "vault:v", token.trim()] {
        assert!(!log.contains(needle), "the agent log contains {needle:.12}...");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_callers_cost_one_decrypt() {
    let stack = Stack::start(&["hot"]).await;
    let _agent = stack.start_agent(&["--peer-binding", "off"]);
    let web = stack.app("team", "web", "web-1").await;
    stack.seal("team", "config", "hot", "web", r#"{"k":"v"}"#);
    // Wait for the agent to see the Secret, without reading it (that would decrypt).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let c = stack.client(&web).await;
    let calls = (0..64).map(|_| {
        let c = c.clone();
        async move { c.get_secrets(["config"]).await }
    });
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.unwrap()["config"].values["k"].expose_secret(), "v");
    }
    assert_eq!(stack.bao.requests_to("transit/decrypt/hot"), 1, "64 concurrent first reads, one Transit decrypt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_account_not_listed_is_denied() {
    let stack = Stack::start(&["shop"]).await;
    let _agent = stack.start_agent(&["--peer-binding", "off"]);
    let web = stack.app("shop", "web", "web-1").await;
    let worker = stack.app("shop", "worker", "worker-1").await;
    stack.seal("shop", "db", "shop", "web", r#"{"password":"p"}"#);
    stack.wait_readable(&web, "db").await;

    let err = stack.client(&worker).await.get_secrets(["db"]).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.to_string().contains("serviceaccount shop/worker may not read secret shop/db"), "{err}");
    let err = stack.client(&worker).await.get_secrets(["missing"]).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "same answer for a Secret that does not exist: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_openbao_setup_script_is_idempotent_and_least_privilege() {
    let stack = Stack::start(&["shop"]).await;
    let again = stack.openbao_setup(&["shop", "extra"]);
    let report = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{report}{}", String::from_utf8_lossy(&again.stderr));
    assert!(report.contains("key shop: exists") && report.contains("key extra: created"), "{report}");

    // Keys are derived: a ciphertext is bound to the context it was sealed with.
    let key = stack.bao.must(&["read", "-format=json", "transit/keys/shop"]);
    assert!(key.contains("\"derived\": true"), "{key}");

    // Each policy, tried with a token that carries only it.
    let ctx = "context=dmF1bHRsZXQvdjEvc2hvcC9kYi9zZWNyZXRzLmpzb24="; // vaultlet/v1/shop/db/secrets.json
    let sealed = stack.bao.must(&["write", "-field=ciphertext", "transit/encrypt/shop", "plaintext=e30=", ctx]);
    let sealed = format!("ciphertext={}", sealed.trim());
    let allowed = |token: &str, args: &[&str]| stack.bao.cli_as(token, args).status.success();
    let agent = stack.bao.token_with_policy("vaultlet-agent");
    assert!(allowed(&agent, &["write", "transit/decrypt/shop", &sealed, ctx]), "the agent decrypts with its keys");
    for args in [
        &["write", "transit/encrypt/shop", "plaintext=e30=", ctx][..],
        &["write", "-f", "transit/keys/shop/rotate"],
        &["write", "transit/rewrap/shop", &sealed, ctx],
        &["read", "transit/keys/shop"],
        &["write", "-f", "transit/keys/other"],
    ] {
        assert!(!allowed(&agent, args), "the agent's policy allows {args:?}");
    }
    let recrypt = stack.bao.token_with_policy("vaultlet-recrypt");
    for args in [
        &["write", "-f", "transit/keys/shop/rotate"][..],
        &["write", "transit/rewrap/shop", &sealed, ctx],
        &["write", "transit/keys/shop/config", "min_decryption_version=1"],
        &["read", "transit/keys/shop"],
    ] {
        assert!(allowed(&recrypt, args), "the recrypt policy refuses {args:?}");
    }
    for args in [
        &["write", "transit/decrypt/shop", &sealed, ctx][..],
        &["write", "transit/encrypt/shop", "plaintext=e30=", ctx],
        &["write", "transit/keys/shop/config", "exportable=true"],
        &["write", "transit/keys/shop/config", "deletion_allowed=true"],
    ] {
        assert!(!allowed(&recrypt, args), "the recrypt policy allows {args:?}");
    }
    let role = stack.bao.must(&["read", "-format=json", "auth/kubernetes/role/vaultlet-agent"]);
    let role: serde_json::Value = serde_json::from_str(&role).unwrap();
    assert_eq!(role["data"]["token_ttl"], 30, "short-lived agent tokens");
    assert_eq!(role["data"]["bound_service_account_names"][0], "vaultlet");
}
