//! The `kube-api-test-server` binary: starts on a free port, announces itself with its
//! URL and a kubeconfig, serves, and stops on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::{sleep, timeout};

const WAIT: Duration = Duration::from_secs(10);

/// One plain HTTP/1.1 GET, as any client would send it.
async fn get(url: &str, path: &str) -> String {
    let address = url.strip_prefix("http://").expect("an http URL");
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: application/json\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
}

#[tokio::test]
async fn binary_writes_a_kubeconfig_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kube-api-test-server"))
        .args(["--listen", "127.0.0.1:0", "--kubeconfig-out"])
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");

    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let url = timeout(WAIT, lines.next_line()).await.expect("URL in time").expect("stdout").expect("a line");
    assert!(url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"), "{url}");

    timeout(WAIT, async {
        while !kubeconfig.exists() {
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the kubeconfig appears");
    let config = std::fs::read_to_string(&kubeconfig).expect("read kubeconfig");
    assert!(config.contains(&format!("server: \"{url}\"")), "{config}");
    assert!(config.contains("current-context: vaultlet-test"));
    assert!(config.contains("namespace: default"));

    let response = get(&url, "/api/v1/namespaces/default").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"kind\":\"Namespace\""), "{response}");

    let pid = child.id().and_then(|id| i32::try_from(id).ok()).expect("a pid");
    kill(Pid::from_raw(pid), Signal::SIGTERM).expect("SIGTERM");
    let status = timeout(WAIT, child.wait()).await.expect("stops in time").expect("exit status");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn binary_help_explains_the_authentication_model() {
    let out = Command::new(env!("CARGO_BIN_EXE_kube-api-test-server")).arg("--help").output().await.expect("runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for expected in ["WITHOUT credentials", "administrator", "--kubeconfig-out", "/_test/faults/hang", "SIGTERM"] {
        assert!(help.contains(expected), "--help should mention {expected:?}:\n{help}");
    }
}
