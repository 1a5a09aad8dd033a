//! Apps that link no client: `vaultlet get --out` writing a file for an init
//! container, and `vaultlet run` putting secrets in a command's environment,
//! restarting or signalling it on a change, forwarding signals and passing its
//! exit code through. Against `vaultlet dev` (the CLI side is the same).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vaultlet_tests::agent::{AgentProcess, vaultlet, vaultlet_bin};

struct Fixture {
    dir: tempfile::TempDir,
    socket: PathBuf,
    _agent: AgentProcess,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("docs")).unwrap();
        let socket = dir.path().join("run/vaultlet.sock");
        write(&dir.path().join("docs/app.json"), r#"{"db-password":"first","port":5432}"#);
        let agent = AgentProcess::dev(&dir.path().join("docs"), &socket);
        Fixture { dir, socket, _agent: agent }
    }

    fn edit(&self, json: &str) {
        write(&self.dir.path().join("docs/app.json"), json);
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `vaultlet run ARGS -- sh -c SCRIPT` with the fixture's socket.
    fn run(&self, args: &[&str], script: &str) -> Child {
        Command::new(vaultlet_bin())
            .args(["run", "--socket", self.socket.to_str().unwrap(), "--token-file", "/nonexistent"])
            .args(args)
            .args(["app", "--", "sh", "-c", script])
            .env("VAULTLET_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vaultlet run")
    }
}

/// As editors and config tools do: a new file renamed over the old one.
fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Waits until `path` holds exactly `want` (a line the test's command wrote).
fn wait_for(path: &Path, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = std::fs::read_to_string(path).unwrap_or_default();
        if got.lines().any(|l| l == want) {
            return;
        }
        assert!(Instant::now() < deadline, "{} never held {want:?}; it holds {got:?}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "vaultlet run did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn get_writes_a_file_whole_and_for_its_owner_only() {
    let f = Fixture::new();
    let out = f.path("secrets.env");
    let sock = f.socket.to_str().unwrap();
    for (format, want) in [
        ("env", "DB_PASSWORD=first\nPORT=5432\n"),
        ("dotenv", "DB_PASSWORD=\"first\"\nPORT=\"5432\"\n"),
        ("json", "{\n  \"app\": {\n    \"db-password\": \"first\",\n    \"port\": \"5432\"\n  }\n}\n"),
    ] {
        let r = vaultlet(&["get", "--socket", sock, "--format", format, "--out", out.to_str().unwrap(), "app"]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        assert!(r.stdout.is_empty(), "nothing on standard output with --out");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), want, "--format {format}");
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o400);
    }
    let r = vaultlet(&["get", "--socket", sock, "--format", "env", "--var", "db-password=DATABASE_PASSWORD", "app"]);
    assert_eq!(String::from_utf8_lossy(&r.stdout), "DATABASE_PASSWORD=first\nPORT=5432\n");
    // A failure leaves the last good file in place.
    let r = vaultlet(&["get", "--socket", sock, "--format", "env", "--out", out.to_str().unwrap(), "missing"]);
    assert!(!r.status.success());
    assert!(std::fs::read_to_string(&out).unwrap().contains("5432"));
}

#[test]
fn run_restarts_its_command_with_the_new_values() {
    let f = Fixture::new();
    let seen = f.path("seen");
    let mut run = f.run(&[], &format!("echo \"$DB_PASSWORD\" >> {}; exec sleep 60", seen.display()));
    wait_for(&seen, "first");
    f.edit(r#"{"db-password":"second","port":5432}"#);
    wait_for(&seen, "second");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(run.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let status = wait_exit(&mut run);
    // sleep, ended by the forwarded SIGTERM: 128 + 15, as a shell reports it.
    assert_eq!(status.code(), Some(143), "{status:?}");
}

#[test]
fn run_signals_its_command_and_rewrites_the_file_on_a_change() {
    let f = Fixture::new();
    let (out, seen) = (f.path("app.env"), f.path("seen"));
    let script = format!(
        "trap 'echo \"hup $(cat {out})\" >> {seen}' HUP; echo started >> {seen}; while true; do sleep 0.1; done",
        out = out.display(),
        seen = seen.display()
    );
    let mut run = f.run(&["--on-change", "signal:HUP", "--out", out.to_str().unwrap(), "--format", "env"], &script);
    wait_for(&seen, "started");
    f.edit(r#"{"db-password":"second","port":5432}"#);
    // The file was rewritten before the signal: the trap reads the new values.
    wait_for(&seen, "hup DB_PASSWORD=second");
    let lines = std::fs::read_to_string(&seen).unwrap();
    assert_eq!(lines.lines().filter(|l| *l == "started").count(), 1, "signalled, not restarted: {lines}");
    let _ = run.kill();
    let _ = run.wait();
}

#[test]
fn run_passes_the_exit_code_through_and_forwards_signals() {
    let f = Fixture::new();
    let mut run = f.run(&[], "exit 7");
    assert_eq!(wait_exit(&mut run).code(), Some(7));

    let seen = f.path("seen");
    let script = format!(
        "trap 'echo usr1 >> {s}' USR1; trap 'echo term >> {s}; exit 3' TERM; echo up >> {s}; while true; do sleep 0.1; done",
        s = seen.display()
    );
    let mut run = f.run(&[], &script);
    wait_for(&seen, "up");
    let pid = nix::unistd::Pid::from_raw(run.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).unwrap();
    wait_for(&seen, "usr1");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_for(&seen, "term");
    assert_eq!(wait_exit(&mut run).code(), Some(3), "the command's own exit code");

    // A secret that does not exist: nothing starts, and it says why.
    let mut missing = Command::new(vaultlet_bin())
        .args(["run", "--socket", f.socket.to_str().unwrap(), "--token-file", "/nonexistent", "missing", "--", "true"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(wait_exit(&mut missing).code(), Some(1));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut missing.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("missing"), "{err}");
}
