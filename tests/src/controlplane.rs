//! A real Kubernetes control plane (etcd and kube-apiserver, built from their
//! Go modules) for one test, through `scripts/controlplane`: started on free
//! loopback ports in a directory of the test's own, stopped when dropped (and,
//! should the test process be killed, by the script's watchdog).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::stack::repo_root;

pub struct ControlPlane {
    pub dir: PathBuf,
    env: HashMap<String, String>,
    /// Started by this value (and stopped when it drops), or only attached to.
    owned: bool,
}

/// The control-plane script of the repository.
pub fn script() -> PathBuf {
    repo_root().join("scripts/controlplane")
}

/// Builds the servers once per process (a no-op when the cache is up to date);
/// the first caller waits for a cold build, with its progress on stderr.
fn build() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let out = Command::new(script()).arg("build").stdout(std::process::Stdio::null()).status();
        match out {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("scripts/controlplane build failed ({s}); see its output above")),
            Err(e) => Err(format!("cannot run scripts/controlplane: {e}")),
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver with their state in `dir`, the API
    /// server with `apiserver_args` besides its own.
    pub fn up(dir: &Path, apiserver_args: &[String]) -> ControlPlane {
        build();
        let mut cmd = Command::new(script());
        cmd.arg("up").arg(dir).args(["--owner-pid", &std::process::id().to_string()]);
        cmd.args(apiserver_args.iter().map(|a| format!("--apiserver-arg={a}")));
        let out = cmd.output().expect("run scripts/controlplane up");
        assert!(
            out.status.success(),
            "scripts/controlplane up failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cp = ControlPlane { dir: dir.to_owned(), env: HashMap::new(), owned: true };
        cp.reload_env();
        cp
    }

    /// The control plane another process runs in `dir` (left running when dropped).
    pub fn attach(dir: &Path) -> ControlPlane {
        let mut cp = ControlPlane { dir: dir.to_owned(), env: HashMap::new(), owned: false };
        cp.reload_env();
        cp
    }

    fn reload_env(&mut self) {
        let text = std::fs::read_to_string(self.dir.join("env")).expect("the control plane's env file");
        self.env = text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), unquote(v))).collect();
    }

    fn get(&self, key: &str) -> &str {
        self.env.get(key).map(String::as_str).unwrap_or_else(|| panic!("{key} missing from the control plane's env"))
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        self.get("KUBE_APISERVER_URL")
    }

    pub fn port(&self) -> u16 {
        self.get("KUBE_APISERVER_PORT").parse().expect("a port")
    }

    /// The service-account issuer (also the API audience).
    pub fn issuer(&self) -> &str {
        self.get("SERVICE_ACCOUNT_ISSUER")
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The admin kubeconfig (system:masters).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The key the API server signs (and verifies) ServiceAccount tokens with.
    pub fn service_account_key(&self) -> PathBuf {
        self.dir.join("pki/sa.key")
    }

    pub fn service_account_public_key(&self) -> PathBuf {
        self.dir.join("pki/sa.pub")
    }

    fn run(&self, command: &str) {
        let out = Command::new(script()).arg(command).arg(&self.dir).output().expect("run scripts/controlplane");
        assert!(
            out.status.success(),
            "scripts/controlplane {command} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the API server (etcd keeps running).
    pub fn stop_apiserver(&self) {
        self.run("stop-apiserver");
    }

    /// Starts it again, same port and certificates; returns once it is ready.
    pub fn start_apiserver(&mut self) {
        self.run("start-apiserver");
        self.reload_env();
    }

    /// Compacts etcd at its current revision: history before it is gone.
    pub fn compact(&self) {
        self.run("compact");
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if self.owned {
            let _ = Command::new(script()).arg("down").arg(&self.dir).output();
        }
    }
}

/// Values in the env file are shell-quoted only where needed (`printf %q`).
fn unquote(v: &str) -> String {
    v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')).map_or_else(|| v.replace('\\', ""), str::to_owned)
}
