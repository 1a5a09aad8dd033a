//! The audit log as a commit: a value leaves the agent only after its record
//! is written, and when the log cannot be written nothing leaves. Real
//! OpenBao, the agent as a separate process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use secrecy::ExposeSecret;
use vaultlet_client::Code;
use vaultlet_tests::stack::Stack;

fn records(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).expect("a JSON record")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_value_a_client_received_is_in_the_audit_log_even_after_sigkill() {
    let stack = Stack::start(&["shop"]).await;
    let mut agent = stack.start_agent(&["--peer-binding", "off"]);
    let web = stack.app("shop", "web", "web-1").await;
    stack.seal("shop", "db", "shop", "web", r#"{"password":"p"}"#);
    stack.wait_readable(&web, "db").await;
    let before = records(&stack.audit_log()).len();
    let client = stack.client(&web).await;
    let mut received = 0;
    for _ in 0..200 {
        let got = client.get_secrets(["db"]).await.unwrap();
        assert_eq!(got["db"].values["password"].expose_secret(), "p");
        received += 1;
    }
    // No time to flush anything: the process is gone the moment the last value arrived.
    agent.kill();
    let after: Vec<_> = records(&stack.audit_log()).into_iter().skip(before).collect();
    let served = after.iter().filter(|r| r["method"] == "GetSecrets" && r["status"] == "OK").count();
    assert_eq!(served, received, "one record per value received");
    let out = stack.vaultlet(&["audit", "verify", stack.audit_log().to_str().unwrap()], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Hiding a read afterwards, by removing its record or by editing who made
    // it, breaks the chain the agent wrote.
    let text = std::fs::read_to_string(stack.audit_log()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let read = lines.len() - 100;
    assert!(lines[read].contains(r#""status":"OK""#) && lines[read].contains(r#""caller":"shop/web""#));
    let removed: Vec<&str> = lines.iter().enumerate().filter(|(i, _)| *i != read).map(|(_, l)| *l).collect();
    let edited =
        text.replacen(lines[read], &lines[read].replace(r#""caller":"shop/web""#, r#""caller":"shop/other""#), 1);
    for (attempt, forged) in [("removed", removed.join("\n") + "\n"), ("edited", edited)] {
        let path = stack.dir.path().join(format!("audit-{attempt}.log"));
        std::fs::write(&path, forged).unwrap();
        let out = stack.vaultlet(&["audit", "verify", path.to_str().unwrap()], None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a record {attempt}: the log still verifies");
        assert!(stderr.contains("the chain is broken"), "a record {attempt}: {stderr}");
    }
}

/// A tmpfs of a few KiB, mounted for the test (the tests run as root).
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(path: PathBuf) -> SmallDisk {
        std::fs::create_dir_all(&path).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(&path).output().unwrap();
        assert!(out.status.success(), "mount a tmpfs (the tests need root): {}", String::from_utf8_lossy(&out.stderr));
        SmallDisk(path)
    }

    /// Fills what is left of it.
    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = [0u8; 4096];
        while std::io::Write::write_all(&mut f, &block).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_audit_log_cannot_be_written_no_value_leaves() {
    let stack = Stack::start(&["shop"]).await;
    let disk = SmallDisk::mount(stack.dir.path().join("audit-disk"));
    let log = disk.0.join("audit.log");
    let _agent = stack.start_agent(&["--peer-binding", "off", "--audit-log", log.to_str().unwrap()]);
    let web = stack.app("shop", "web", "web-1").await;
    stack.seal("shop", "db", "shop", "web", r#"{"password":"p"}"#);
    stack.wait_readable(&web, "db").await;
    let client = stack.client(&web).await;
    assert!(client.get_secrets(["db"]).await.is_ok());

    let filler = disk.fill();
    // The log's last page may still hold a few records; then nothing fits.
    let mut served = 0;
    while client.get_secrets(["db"]).await.is_ok() {
        served += 1;
        assert!(served < 20, "calls are still served with the disk full");
    }
    for _ in 0..5 {
        let err = client.get_secrets(["db"]).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        assert!(err.to_string().contains("audit log not writable"), "{err}");
        assert!(!err.to_string().contains("\"p\""));
    }
    // A watch is refused as a read is (UNAVAILABLE: the client keeps trying).
    let mut events = client.watch(["db"]).unwrap();
    let first = tokio::time::timeout(Duration::from_secs(2), events.next()).await;
    assert!(first.is_err(), "no snapshot leaves unaudited");

    // Space again: calls are served, the waiting watch opens, and the chain
    // holds across the failure.
    std::fs::remove_file(filler).unwrap();
    assert!(client.get_secrets(["db"]).await.is_ok());
    let snapshot = tokio::time::timeout(Duration::from_secs(10), events.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(snapshot.kind, vaultlet_client::EventKind::Snapshot);
    let out = stack.vaultlet(&["audit", "verify", log.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
