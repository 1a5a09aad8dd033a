//! Faults, as users see them: a hung or dead OpenBao, a misbehaving API server,
//! a killed agent, secrets that stop decrypting, hostile clients. The agent is
//! a separate process; OpenBao, kube-apiserver and etcd are real (the API
//! server's faults come from a proxy in front of it, compaction and restarts).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use secrecy::ExposeSecret;
use tokio::io::AsyncBufReadExt;
use tokio::time::timeout;
use vaultlet_client::{Client, Code, Event, EventKind, SecretRef, TokenSource, WatchStream};
use vaultlet_tests::agent::vaultlet_bin;
use vaultlet_tests::cgroup::PodCgroup;
use vaultlet_tests::events::{next_within, value};
use vaultlet_tests::stack::Stack;

async fn next(events: &mut WatchStream) -> Event {
    next_within(events, Duration::from_secs(20)).await
}

/// A new revision of `ns/name` (sealed under `shop`) holding `{"v": v}`,
/// written by the administrator straight to the API server (not through the
/// agent's proxy, whatever fault it is in).
async fn reseal(stack: &Stack, ns: &str, name: &str, v: &str) {
    let ct = stack.encrypt_for("shop", ns, name, "secrets.json", format!(r#"{{"v":"{v}"}}"#).as_bytes());
    set_data(stack, ns, name, "secrets.json", &ct).await;
}

async fn set_data(stack: &Stack, ns: &str, name: &str, key: &str, ciphertext: &str) {
    let mut secret: Secret = stack.kube.get(ns, name).await.expect("Secret");
    secret.data = Some([(key.to_owned(), ByteString(ciphertext.as_bytes().to_vec()))].into());
    stack.kube.replace(secret).await.expect("replace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openbao_hung_or_down_never_hangs_a_caller_and_cached_secrets_stay_served() {
    let mut stack = Stack::start(&["shop"]).await;
    let _agent = stack.start_agent(&["--peer-binding", "off", "--vault-timeout", "2s"]);
    let web = stack.app("shop", "web", "web-1").await;
    for name in ["cached", "later", "last"] {
        stack.seal("shop", name, "shop", "web", &format!(r#"{{"name":"{name}"}}"#));
    }
    stack.wait_readable(&web, "cached").await;
    let c = stack.client(&web).await;
    assert_eq!(stack.admin_get("/readyz").0, 200);

    stack.bao.hang();
    let t = Instant::now();
    let got = c.get_secrets(["cached"]).await.expect("a cached secret is served while OpenBao hangs");
    assert_eq!(got["cached"].values["name"].expose_secret(), "cached");
    assert!(t.elapsed() < Duration::from_secs(1), "served from the cache: {:?}", t.elapsed());

    let t = Instant::now();
    let err = c.get_secrets(["later"]).await.unwrap_err();
    let waited = t.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.to_string().contains(&format!("Vault/OpenBao {}", stack.bao.addr)), "names the backend: {err}");
    assert!(err.to_string().contains("timed out") || err.to_string().contains("no answer within 2s"), "{err}");
    assert!(waited < Duration::from_secs(5), "bounded by --vault-timeout: {waited:?}");
    let (status, why) = stack.admin_get("/readyz");
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("Vault/OpenBao"), "{why}");

    stack.bao.resume();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match c.get_secrets(["later"]).await {
            Ok(got) => {
                assert_eq!(got["later"].values["name"].expose_secret(), "later");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "no recovery after OpenBao came back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(stack.admin_get("/readyz").0, 200, "ready again");

    // Down for good: an uncached secret fails at once, cached ones are served.
    stack.bao.kill();
    let t = Instant::now();
    let err = c.get_secrets(["last"]).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(t.elapsed() < Duration::from_secs(3), "a refused connection fails fast: {:?}", t.elapsed());
    assert!(c.get_secrets(["cached", "later"]).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_server_hangs_drops_restarts_and_compactions_lose_no_change() {
    let mut stack = Stack::start(&["shop"]).await;
    let _agent = stack.start_agent(&["--peer-binding", "off"]);
    let web = stack.app("shop", "web", "web-1").await;
    stack.seal("shop", "db", "shop", "web", r#"{"v":"0"}"#);
    stack.wait_readable(&web, "db").await;
    let c = stack.client(&web).await;
    let mut events = c.watch(["db"]).unwrap();
    assert_eq!(value(&next(&mut events).await, "v"), "0");

    // Hung: the change made meanwhile arrives once the server answers again.
    stack.kube.proxy.hang();
    reseal(&stack, "shop", "db", "1").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.kube.proxy.release();
    let e = next(&mut events).await;
    assert_eq!((e.kind, value(&e, "v").as_str()), (EventKind::ContentChanged, "1"));

    // Watch connections dropped, then a change.
    stack.kube.proxy.drop_connections();
    reseal(&stack, "shop", "db", "2").await;
    assert_eq!(value(&next(&mut events).await, "v"), "2");

    // Changes while the agent's watch is away, etcd compacted, the API server
    // stopped and started (its watch cache empty): the agent's resourceVersion
    // is gone (410 Gone), it lists again and still sees the newest change.
    stack.kube.proxy.hang();
    reseal(&stack, "shop", "db", "3").await;
    reseal(&stack, "shop", "db", "4").await;
    restart_after_compaction(&mut stack);
    let e = next(&mut events).await;
    let seen = value(&e, "v");
    let last = if seen == "3" { value(&next(&mut events).await, "v") } else { seen };
    assert_eq!(last, "4", "the newest change arrives");

    // A deletion while the watch is away is not missed either ...
    stack.kube.proxy.hang();
    stack.kube.delete::<Secret>("shop", "db").await.unwrap();
    restart_after_compaction(&mut stack);
    assert_eq!(next(&mut events).await.kind, EventKind::Deleted);

    // ... nor a Secret deleted and created again meanwhile.
    stack.seal("shop", "db", "shop", "web", r#"{"v":"5"}"#);
    assert_eq!(value(&next(&mut events).await, "v"), "5");
    stack.kube.proxy.hang();
    stack.kube.delete::<Secret>("shop", "db").await.unwrap();
    stack.seal("shop", "db", "shop", "web", r#"{"v":"6"}"#);
    restart_after_compaction(&mut stack);
    // The deletion may be seen (a watch that resumed) or not (a new list).
    let mut e = next(&mut events).await;
    if e.kind == EventKind::Deleted {
        e = next(&mut events).await;
    }
    assert_eq!((e.kind, value(&e, "v").as_str()), (EventKind::ContentChanged, "6"));
}

/// With the agent's connections hung: etcd compacted, the API server restarted,
/// then the agent let through again.
fn restart_after_compaction(stack: &mut Stack) {
    stack.kube.cp.compact();
    stack.kube.cp.stop_apiserver();
    stack.kube.cp.start_apiserver();
    stack.kube.proxy.release();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_managed_secrets_than_one_list_page_are_all_listed() {
    let stack = Stack::start(&["shop"]).await;
    let web = stack.app("shop", "web", "web-1").await;
    // kube-runtime lists 500 at a time: the last of these is on the second page.
    let ct = stack.encrypt_for("shop", "shop", "s-599", "secrets.json", br#"{"v":"last"}"#);
    let mut secrets = String::new();
    for i in 0..600 {
        let data = if i == 599 { ct.clone() } else { "vault:v1:bm90LXJlYWQ=".to_owned() };
        secrets.push_str(&format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: s-{i:03}\n  namespace: shop\n  labels: {{vaultlet.io/managed: \"true\"}}\n  annotations: {{vaultlet.io/transit-key: shop, vaultlet.io/binding: v1, vaultlet.io/allowed-service-accounts: web}}\nstringData: {{secrets.json: \"{data}\"}}\n"
        ));
    }
    stack.kube.apply(&secrets).unwrap();
    let _agent = stack.start_agent(&["--peer-binding", "off"]);
    stack.wait_readable(&web, "s-599").await;
    let got = stack.client(&web).await.get_secrets(["s-599"]).await.unwrap();
    assert_eq!(got["s-599"].values["v"].expose_secret(), "last");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_agent_comes_back_and_watches_resume_with_the_current_state() {
    let stack = Stack::start(&["shop"]).await;
    let mut agent = stack.start_agent(&["--peer-binding", "off"]);
    let web = stack.app("shop", "web", "web-1").await;
    stack.seal("shop", "db", "shop", "web", r#"{"v":"1"}"#);
    stack.wait_readable(&web, "db").await;
    let c = stack.client(&web).await;
    let mut events = c.watch(["db"]).unwrap();
    let first = next(&mut events).await;
    assert_eq!((first.kind, value(&first, "v").as_str()), (EventKind::Snapshot, "1"));

    agent.kill();
    stack.seal("shop", "db", "shop", "web", r#"{"v":"2"}"#);
    agent.restart();
    let e = next(&mut events).await;
    assert_eq!((e.kind, value(&e, "v").as_str()), (EventKind::Snapshot, "2"), "the current state, once");
    assert!(timeout(Duration::from_secs(1), events.next()).await.is_err(), "nothing repeated");
    // The socket path keeps working for new clients.
    assert!(stack.client(&web).await.get_secrets(["db"]).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revisions_that_cannot_be_decoded_keep_the_last_good_values_and_recover() {
    let stack = Stack::start(&["shop", "doomed"]).await;
    let _agent = stack.start_agent(&["--peer-binding", "off"]);
    let web = stack.app("shop", "web", "web-1").await;
    stack.seal("shop", "db", "shop", "web", r#"{"password":"good"}"#);
    stack.wait_readable(&web, "db").await;
    let c = stack.client(&web).await;
    let mut events = c.watch(["db"]).unwrap();
    assert_eq!(next(&mut events).await.kind, EventKind::Snapshot);

    // A ciphertext Transit refuses.
    set_data(&stack, "shop", "db", "secrets.json", "vault:v1:bm90IGEgcmVhbCBjaXBoZXJ0ZXh0").await;
    let e = next(&mut events).await;
    assert_eq!(e.kind, EventKind::Error);
    assert_eq!(value(&e, "password"), "good", "the last good values come with the error");
    let err = e.error.unwrap();
    assert_eq!(err.code, Code::FailedPrecondition);
    assert!(err.message.contains("cannot decrypt"), "{}", err.message);
    let got = c.get_secrets(["db"]).await.unwrap();
    assert_eq!(got["db"].values["password"].expose_secret(), "good", "still served");

    // A document that no longer parses (encrypted, but not JSON).
    let ct = stack.encrypt_for("shop", "shop", "db", "secrets.json", b"password: not json");
    set_data(&stack, "shop", "db", "secrets.json", &ct).await;
    let e = next(&mut events).await;
    assert_eq!(e.kind, EventKind::Error);
    assert!(e.error.unwrap().message.contains("not valid JSON"));

    // Recovery on the next good version.
    stack.seal("shop", "db", "shop", "web", r#"{"password":"better"}"#);
    let e = next(&mut events).await;
    assert_eq!((e.kind, value(&e, "password").as_str()), (EventKind::ContentChanged, "better"));

    // A Transit key that was deleted: the next revision cannot be decrypted.
    stack.seal("shop", "old", "doomed", "web", r#"{"k":"v"}"#);
    stack.wait_readable(&web, "old").await;
    let mut old = c.watch(["old"]).unwrap();
    assert_eq!(next(&mut old).await.kind, EventKind::Snapshot);
    stack.bao.must(&["write", "transit/keys/doomed/config", "deletion_allowed=true"]);
    stack.bao.must(&["delete", "transit/keys/doomed"]);
    // A revision that must be decrypted again (an annotation edit alone would
    // keep the decrypted document): the same ciphertext, read as YAML.
    let mut secret: Secret = stack.kube.get("shop", "old").await.unwrap();
    secret.metadata.annotations.get_or_insert_default().insert("vaultlet.io/format".into(), "yaml".into());
    stack.kube.replace(secret).await.unwrap();
    let e = next(&mut old).await;
    assert_eq!(e.kind, EventKind::Error);
    assert!(e.error.as_ref().unwrap().message.contains("doomed"), "names the key");
    assert_eq!(value(&e, "k"), "v");

    // Each bad revision is counted, and logged once.
    assert!(stack.metric("vaultlet_undecodable_revisions_total") >= 3.0);
    let log = std::fs::read_to_string(stack.agent_log()).unwrap();
    let lines = log.lines().filter(|l| l.contains("new revision cannot be decoded")).count();
    assert_eq!(lines, 3, "one log line per bad revision");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_clients_do_not_take_the_agent_down() {
    let stack = Stack::start(&["shop"]).await;
    // Peer binding off: this test process (not in a pod) plays every hostile peer.
    let agent = stack.start_agent(&[
        "--peer-binding",
        "off",
        "--max-connections-per-peer",
        "20",
        "--max-streams-per-peer",
        "30",
    ]);
    let web = stack.app("shop", "web", "web-1").await;
    stack.seal("shop", "db", "shop", "web", r#"{"password":"p"}"#);
    let socket = stack.socket();
    let rightful = |reference: &str| {
        let cgroup = PodCgroup::create(&web.pod_uid);
        let args =
            ["get", "--socket", socket.to_str().unwrap(), "--token-file", web.token_file.to_str().unwrap(), reference];
        let out = cgroup.command(&vaultlet_bin(), &args).env("VAULTLET_LOG", "warn").output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rightful("db").0 {
        assert!(Instant::now() < deadline, "the rightful caller is not served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Garbage bytes instead of HTTP/2: the connection is closed.
    let mut garbage = UnixStream::connect(&socket).unwrap();
    garbage.write_all(&[0xde; 4096]).unwrap();
    garbage.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    let _ = garbage.read(&mut buf);
    // Half-open connections: a partial preface, and silence.
    let mut held = Vec::new();
    for i in 0..10 {
        let mut s = UnixStream::connect(&socket).unwrap();
        if i % 2 == 0 {
            s.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
        }
        held.push(s);
    }
    // Far more connections than one peer may hold: the rest are closed at once.
    let mut refused = 0;
    for _ in 0..300 {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        if matches!(s.read(&mut buf), Ok(0)) {
            refused += 1;
        } else {
            held.push(s);
        }
    }
    assert!(refused >= 250, "the per-peer connection limit holds: {refused} refused");
    drop(held);

    // A 5 MB request, and thousands of garbage tokens: clear statuses.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let outsider = Client::connect(&socket).await.unwrap().with_token_source(TokenSource::None);
    let err = outsider.get(vec![SecretRef::new("", "x".repeat(5 << 20))]).await.unwrap_err();
    assert!(matches!(err.code(), Code::ResourceExhausted | Code::OutOfRange), "{err}");
    let reviews_before = stack.metric("vaultlet_token_reviews_total");
    let bad_token = stack.dir.path().join("bad-token");
    std::fs::write(&bad_token, "eyJhbGciOiJSUzI1NiJ9.eyJ4IjoxfQ.c2lnbmF0dXJl").unwrap();
    let flooder = Client::connect(&socket).await.unwrap().with_token_source(TokenSource::File(bad_token));
    let calls = (0..2000).map(|_| {
        let f = flooder.clone();
        async move { f.get_secrets(["db"]).await }
    });
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.unwrap_err().code(), Code::Unauthenticated);
    }
    assert_eq!(stack.metric("vaultlet_token_reviews_total"), reviews_before, "refused before any TokenReview");

    // Watch streams beyond the per-peer limit are refused; a reader that never
    // reads holds nothing more while the secret keeps changing.
    let wc = stack.client(&web).await;
    let mut slow = Vec::new();
    let mut limited = 0;
    for _ in 0..35 {
        let mut w = wc.watch(["db"]).unwrap();
        match timeout(Duration::from_secs(5), w.next()).await {
            Ok(Some(Ok(_))) => slow.push(w),
            Ok(Some(Err(e))) if e.code() == Code::ResourceExhausted => limited += 1,
            other => panic!("unexpected: {:?}", other.map(|o| o.map(|r| r.map(|e| e.kind)))),
        }
    }
    assert_eq!((slow.len(), limited), (30, 5), "30 streams per peer, then RESOURCE_EXHAUSTED");
    for v in 0..30 {
        stack.seal("shop", "db", "shop", "web", &format!(r#"{{"password":"p{v}","pad":"{}"}}"#, "x".repeat(4096)));
    }
    let rss = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let kib: u64 =
        rss.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(kib < 128 * 1024, "memory stays bounded: {kib} KiB");

    // Through all of it the agent stayed up and the rightful caller is served.
    let (served, err) = rightful("db");
    assert!(served, "{err}");
    assert!(stack.metric("vaultlet_refused_connections_total") >= 250.0);
}

/// One pod opens every connection it may, each with unfinished requests and
/// large headers, and holds them: the agent's memory stays under the
/// DaemonSet's limit (96 MiB) and another pod keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_pod_cannot_starve_the_node() {
    let stack = Stack::start(&["shop"]).await;
    let agent = stack.start_agent(&[]);
    let web = stack.app("shop", "web", "web-1").await;
    let hostile = stack.app("shop", "web", "hostile-1").await;
    stack.seal("shop", "db", "shop", "web", r#"{"password":"p"}"#);
    let socket = stack.socket();
    let rightful = || {
        let cgroup = PodCgroup::create(&web.pod_uid);
        let args =
            ["get", "--socket", socket.to_str().unwrap(), "--token-file", web.token_file.to_str().unwrap(), "db"];
        let started = Instant::now();
        let out = cgroup.command(&vaultlet_bin(), &args).env("VAULTLET_LOG", "warn").output().unwrap();
        (out.status.success(), started.elapsed(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rightful().0 {
        assert!(Instant::now() < deadline, "the rightful caller is not served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The default limits: 32 connections per pod, 100 streams each, 8 KiB of headers.
    let cgroup = PodCgroup::create(&hostile.pod_uid);
    let tool = vaultlet_bin().with_file_name("vaultlet-hostile-pod");
    let args = [
        "--socket",
        socket.to_str().unwrap(),
        "--token-file",
        hostile.token_file.to_str().unwrap(),
        "--connections",
        "40",
        "--streams",
        "100",
        "--header-bytes",
        "6000",
    ];
    let mut child = tokio::process::Command::from(cgroup.command(&tool, &args))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the hostile pod");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = timeout(Duration::from_secs(60), lines.next_line()).await.expect("hostile pod ready").unwrap();
    let ready = ready.unwrap_or_default();
    assert!(ready.starts_with("ready"), "{ready}");

    // While it holds everything it could open: others are served, memory is bounded.
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let (served, took, err) = rightful();
        assert!(served, "another pod's call failed: {err}");
        slowest = slowest.max(took);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let kib = |field: &str| -> u64 {
        status.lines().find_map(|l| l.strip_prefix(field)).unwrap().split_whitespace().next().unwrap().parse().unwrap()
    };
    let (rss, peak) = (kib("VmRSS:"), kib("VmHWM:"));
    eprintln!("hostile pod: {ready}; agent {rss} KiB resident, peak {peak} KiB; slowest other call {slowest:?}");
    assert!(peak < 96 * 1024, "the agent peaked at {peak} KiB (resident now {rss} KiB), over the DaemonSet's limit");
    assert!(stack.metric("vaultlet_refused_connections_total") >= 8.0, "beyond 32 connections, refused");
    assert!(stack.metric("vaultlet_refused_calls_total") > 0.0, "beyond 256 calls waiting, refused");

    // Its connections never authenticated a call: closed after their grace.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let (served, _, err) = rightful();
    assert!(served, "{err}");
    drop(child.stdin.take());
    let _ = child.wait().await;
}
