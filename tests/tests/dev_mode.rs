//! End to end: `vaultlet dev` as a process, read with `vaultlet get`, `vaultlet
//! watch` and the Rust client, through edits, bad input and restarts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use secrecy::ExposeSecret;
use tokio::time::timeout;
use vaultlet_client::{Client, Event, EventKind, SecretRef, WatchStream};
use vaultlet_tests::agent::{AgentProcess, vaultlet};
use vaultlet_tests::events::{next_within, value};

struct Fixture {
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("docs")).unwrap();
        std::fs::create_dir(dir.path().join("docs/payments")).unwrap();
        let socket = dir.path().join("run/vaultlet.sock");
        let f = Fixture { dir, socket };
        f.write("app.json", r#"{"db_password":"s3cret","port":5432}"#);
        f.write("payments/db.yaml", "user: pay\npassword: hunter2\n");
        f.write("worker.env", "QUEUE=amqp://q\nTOKEN=\"a b\"\n");
        f
    }

    fn docs(&self) -> PathBuf {
        self.dir.path().join("docs")
    }

    /// Writes atomically (temp file + rename), as editors and config tools do.
    fn write(&self, rel: &str, text: &str) {
        let path = self.docs().join(rel);
        let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_str().unwrap()));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    fn agent(&self) -> AgentProcess {
        AgentProcess::dev(&self.docs(), &self.socket)
    }

    fn sock(&self) -> &str {
        self.socket.to_str().unwrap()
    }
}

async fn next(events: &mut WatchStream) -> Event {
    next_within(events, Duration::from_secs(10)).await
}

#[test]
fn cli_get_prints_json_keyed_by_ref() {
    let f = Fixture::new();
    let _agent = f.agent();
    let out = vaultlet(&["get", "--socket", f.sock(), "app", "payments/db", "worker:worker.env"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["app"]["db_password"], "s3cret");
    assert_eq!(doc["app"]["port"], "5432");
    assert_eq!(doc["payments/db"]["password"], "hunter2");
    assert_eq!(doc["worker:worker.env"]["TOKEN"], "a b");

    let raw = vaultlet(&["get", "--socket", f.sock(), "--raw", "payments/db"]);
    assert_eq!(String::from_utf8(raw.stdout).unwrap(), "user: pay\npassword: hunter2\n");
}

#[test]
fn cli_get_failures_name_the_status_and_what_to_do() {
    let f = Fixture::new();
    let _agent = f.agent();
    let cases: [(&[&str], &str, &str); 4] = [
        (&["nope"], "NOT_FOUND", "secret default/nope not found"),
        (&["app:other.json"], "NOT_FOUND", "no data key \"other.json\""),
        (&["Bad_Ref"], "INVALID_ARGUMENT", "invalid secret name"),
        (&["a/b/c"], "INVALID_ARGUMENT", "invalid secret name"),
    ];
    for (refs, code, msg) in cases {
        let mut args = vec!["get", "--socket", f.sock()];
        args.extend_from_slice(refs);
        let out = vaultlet(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{refs:?} should fail");
        assert!(err.contains(code) && err.contains(msg), "{refs:?}: {err}");
        assert!(out.stdout.is_empty());
    }
    let absent = f.dir.path().join("none.sock");
    let out = vaultlet(&["get", "--socket", absent.to_str().unwrap(), "app"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("UNAVAILABLE") && err.contains("is the agent running"), "{err}");
}

#[test]
fn socket_is_private_replaced_when_stale_and_removed_on_shutdown() {
    let f = Fixture::new();
    let mut agent = f.agent();
    let mode = std::fs::metadata(&f.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "owner and group only");

    // A second agent must not steal a live socket.
    let second = vaultlet(&["dev", "--secrets-dir", f.docs().to_str().unwrap(), "--socket", f.sock()]);
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already serving"));

    // Killed: the socket file stays; the next start replaces it.
    agent.kill();
    assert!(f.socket.exists());
    agent.restart();
    assert_eq!(agent.terminate(Duration::from_secs(15)), Some(0));
    assert!(!f.socket.exists(), "socket removed on graceful shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_reads_several_refs_in_one_call() {
    let f = Fixture::new();
    let _agent = f.agent();
    let client = Client::connect(&f.socket).await.unwrap();
    let got = client.get_secrets(["app", "default/app:app.json", "payments/db"]).await.unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got["app"].values["db_password"].expose_secret(), "s3cret");
    assert_eq!(got["default/app:app.json"].reference.to_string(), "default/app:app.json");
    assert_eq!(got["payments/db"].reference.namespace, "payments");
    assert_eq!(got["app"].key_version, 0, "dev mode does not encrypt");
    assert!(!format!("{:?}", got["app"]).contains("s3cret"), "Debug never shows values");

    let mut subset: SecretRef = "app".parse().unwrap();
    subset.fields = vec!["port".into()];
    let only = client.get(vec![subset]).await.unwrap();
    assert_eq!(only[0].values.keys().collect::<Vec<_>>(), ["port"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_edits_errors_deletes_and_agent_restarts() {
    let f = Fixture::new();
    let mut agent = f.agent();
    let client = Client::connect(&f.socket).await.unwrap();
    let mut events = client.watch(["app", "later"]).unwrap();

    let mut first = [next(&mut events).await, next(&mut events).await];
    first.sort_by_key(|e| e.index);
    assert_eq!(first[0].kind, EventKind::Snapshot);
    assert_eq!(value(&first[0], "db_password"), "s3cret");
    assert_eq!(first[1].kind, EventKind::Deleted, "a secret that does not exist yet starts as DELETED");

    f.write("app.json", r#"{"db_password":"rotated","port":5432}"#);
    let e = next(&mut events).await;
    assert_eq!((e.kind, value(&e, "db_password").as_str()), (EventKind::ContentChanged, "rotated"));

    // A broken document: ERROR, and the last good values stay.
    f.write("app.json", r#"{"db_password": "#);
    let e = next(&mut events).await;
    assert_eq!(e.kind, EventKind::Error);
    assert_eq!(value(&e, "db_password"), "rotated");
    let err = e.error.unwrap();
    assert_eq!(err.code, vaultlet_client::Code::FailedPrecondition);
    assert!(err.message.contains("not valid JSON") && !err.message.contains("db_password"), "{}", err.message);
    let got = client.get_secrets(["app"]).await.unwrap();
    assert_eq!(got["app"].values["db_password"].expose_secret(), "rotated", "last good value still served");

    f.write("app.json", r#"{"db_password":"fixed"}"#);
    let e = next(&mut events).await;
    assert_eq!((e.kind, value(&e, "db_password").as_str()), (EventKind::ContentChanged, "fixed"));
    let held = e.secret.revision.clone();

    f.write("later.yaml", "x: 1\n");
    let e = next(&mut events).await;
    assert_eq!((e.index, e.kind), (1, EventKind::ContentChanged));

    std::fs::remove_file(f.docs().join("app.json")).unwrap();
    assert_eq!(next(&mut events).await.kind, EventKind::Deleted);
    f.write("app.json", r#"{"db_password":"back"}"#);
    let e = next(&mut events).await;
    assert_eq!((e.kind, value(&e, "db_password").as_str()), (EventKind::ContentChanged, "back"));
    assert_ne!(e.secret.revision, held);

    // Graceful restart: the open stream ends at once (so the agent exits well
    // within its 10 s grace for open connections), the client resumes it, it
    // repeats nothing, and sees the next edit.
    assert_eq!(agent.terminate(Duration::from_secs(5)), Some(0));
    agent.restart();
    f.write("app.json", r#"{"db_password":"after-restart"}"#);
    let e = next(&mut events).await;
    // SNAPSHOT if the edit landed before the client reconnected, else CONTENT_CHANGED.
    assert!(matches!(e.kind, EventKind::Snapshot | EventKind::ContentChanged), "{:?}", e.kind);
    assert_eq!(value(&e, "db_password"), "after-restart");

    // Killed while a change happens: the resumed stream brings the current state.
    agent.kill();
    f.write("app.json", r#"{"db_password":"while-down"}"#);
    agent.restart();
    let e = next(&mut events).await;
    assert_eq!((e.kind, value(&e, "db_password").as_str()), (EventKind::Snapshot, "while-down"));
    assert!(timeout(Duration::from_millis(500), events.next()).await.is_err(), "nothing repeated after resuming");
}

#[test]
fn cli_watch_prints_one_json_line_per_event() {
    let f = Fixture::new();
    let _agent = f.agent();
    let mut child = std::process::Command::new(vaultlet_tests::agent::vaultlet_bin())
        .args(["watch", "--socket", f.sock(), "app"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["kind"], "SNAPSHOT");
    assert_eq!(first["secret"], "default/app");
    assert_eq!(first["values"]["db_password"], "s3cret");
    assert_eq!(first["key_version"], 0);
    assert!(first["revision"].as_str().is_some_and(|r| !r.is_empty()));
    f.write("app.json", r#"{"db_password":"next"}"#);
    let second: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(
        (second["kind"].as_str(), second["values"]["db_password"].as_str()),
        (Some("CONTENT_CHANGED"), Some("next"))
    );
    child.kill().unwrap();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_overlong_requests_get_a_status_and_the_agent_stays_up() {
    let f = Fixture::new();
    let _agent = f.agent();
    let client = Client::connect(&f.socket).await.unwrap();

    let huge = SecretRef::new("", "a".repeat(5 * 1024 * 1024));
    let err = client.get(vec![huge]).await.unwrap_err();
    assert!(
        matches!(err.code(), vaultlet_client::Code::ResourceExhausted | vaultlet_client::Code::OutOfRange),
        "{err}"
    );

    let many: Vec<SecretRef> = (0..129).map(|i| SecretRef::new("", format!("s{i}"))).collect();
    let err = client.get(many).await.unwrap_err();
    assert_eq!(err.code(), vaultlet_client::Code::InvalidArgument, "{err}");
    assert!(err.to_string().contains("limit"), "{err}");

    let err = client.get(vec![]).await.unwrap_err();
    assert_eq!(err.code(), vaultlet_client::Code::InvalidArgument, "{err}");

    // Still serving.
    let got = client.get_secrets(["app"]).await.unwrap();
    assert_eq!(got["app"].values["db_password"].expose_secret(), "s3cret");
}

#[test]
fn dev_refuses_a_missing_directory_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let missing: &Path = &dir.path().join("nope");
    let socket = dir.path().join("s.sock");
    let out = vaultlet(&["dev", "--secrets-dir", missing.to_str().unwrap(), "--socket", socket.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("secrets directory") && err.contains("nope"), "{err}");
}
