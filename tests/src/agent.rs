//! Runs the `vaultlet` binary as a separate process, as operators do, so tests
//! can restart, terminate or kill it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The agent binary: `VAULTLET_BIN`, else `vaultlet` in the same target
/// directory as this executable (a test runs from `target/debug/deps/`, a
/// binary such as the benchmark from `target/debug/` or `target/release/`).
pub fn vaultlet_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VAULTLET_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("target directory");
    let dir = if dir.ends_with("deps") { dir.parent().expect("target directory") } else { dir };
    let bin = dir.join("vaultlet");
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build -p vaultlet` (or set VAULTLET_BIN)",
        bin.display()
    );
    bin
}

/// Runs `vaultlet ARGS...` to completion.
pub fn vaultlet(args: &[&str]) -> Output {
    Command::new(vaultlet_bin()).args(args).env("VAULTLET_LOG", "warn").output().expect("run vaultlet")
}

/// A running agent; killed when dropped.
pub struct AgentProcess {
    child: Child,
    pub socket: PathBuf,
    /// What the agent runs under (e.g. valgrind), if anything.
    wrapper: Vec<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: Option<PathBuf>,
}

impl AgentProcess {
    /// Starts `vaultlet ARGS...` and waits until `socket` accepts connections.
    pub fn start(args: &[&str], socket: &Path) -> AgentProcess {
        AgentProcess::launch(args, &[], None, socket)
    }

    /// `start` with these environment variables, appending the agent's log
    /// (stderr) to `log` when given.
    pub fn launch(args: &[&str], env: &[(&str, &str)], log: Option<&Path>, socket: &Path) -> AgentProcess {
        Self::launch_wrapped(&[], args, env, log, socket)
    }

    /// `launch`, the agent run by `wrapper` (`valgrind --tool=callgrind`, say).
    pub fn launch_wrapped(
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
        log: Option<&Path>,
        socket: &Path,
    ) -> AgentProcess {
        let wrapper: Vec<String> = wrapper.iter().map(|s| (*s).to_owned()).collect();
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let log = log.map(Path::to_owned);
        let stale = socket_inode(socket);
        let child = spawn(&wrapper, &args, &env, log.as_deref());
        let mut agent = AgentProcess { child, socket: socket.to_owned(), wrapper, args, env, log };
        agent.wait_ready(stale);
        agent
    }

    /// `vaultlet dev --secrets-dir DIR --socket SOCKET`.
    pub fn dev(dir: &Path, socket: &Path) -> AgentProcess {
        let (d, s) = (dir.to_str().unwrap(), socket.to_str().unwrap());
        AgentProcess::start(&["dev", "--secrets-dir", d, "--socket", s], socket)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the agent's socket (a new one, not the `stale` file a killed
    /// agent left). Not by connecting: a production agent would audit a test
    /// process, outside any pod, as a refused connection.
    fn wait_ready(&mut self, stale: Option<(u64, i64, i64)>) {
        // Under a wrapper such as valgrind, start-up takes many times longer.
        let deadline = Instant::now() + Duration::from_secs(if self.wrapper.is_empty() { 30 } else { 300 });
        loop {
            let now = socket_inode(&self.socket);
            if now.is_some() && now != stale {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("agent status") {
                let log = self.log.as_ref().and_then(|l| std::fs::read_to_string(l).ok()).unwrap_or_default();
                panic!("agent exited before listening ({status}): vaultlet {}\n{log}", self.args.join(" "));
            }
            assert!(Instant::now() < deadline, "agent did not listen on {} in time", self.socket.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for the exit (at most `within`); returns the exit code.
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("agent status") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "agent still running {within:?} after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to clean up (the socket file stays behind).
    pub fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Starts the same command again (after `terminate` or `kill`).
    pub fn restart(&mut self) {
        let stale = socket_inode(&self.socket);
        self.child = spawn(&self.wrapper, &self.args, &self.env, self.log.as_deref());
        self.wait_ready(stale);
    }

    fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), sig);
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill();
        }
    }
}

/// Which socket file is at `path`, if any (an agent binds a new one, listening
/// as soon as it exists): its inode and creation time, as an inode number is
/// reused as soon as it is freed.
fn socket_inode(path: &Path) -> Option<(u64, i64, i64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.file_type().is_socket())
        .map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
}

fn spawn(wrapper: &[String], args: &[String], env: &[(String, String)], log: Option<&Path>) -> Child {
    let stderr = match log {
        Some(path) => {
            Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(path).expect("agent log file"))
        }
        None => Stdio::inherit(),
    };
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(vaultlet_bin());
            c
        }
        None => Command::new(vaultlet_bin()),
    };
    cmd.args(args)
        .env("VAULTLET_LOG", std::env::var("VAULTLET_LOG").unwrap_or_else(|_| "warn".into()))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start vaultlet")
}

/// The agent a benchmark or soak runs is the build next to its own binary
/// (release, for figures that mean something); run through cargo, it builds it
/// first so the figures are of the current source.
pub fn build_agent_for_this_profile() -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let profile_dir = me.parent().ok_or("no target directory")?;
    if let Ok(cargo) = std::env::var("CARGO") {
        let release = profile_dir.ends_with("release");
        eprintln!("building the agent ({})", if release { "release" } else { "debug" });
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "vaultlet"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().map_err(|e| format!("cargo build: {e}"))?;
        if !status.success() {
            return Err("building the agent failed".into());
        }
    }
    if !profile_dir.ends_with("release") {
        eprintln!("warning: not a release build: the figures will be of a debug agent");
    }
    let agent = profile_dir.join("vaultlet");
    if !agent.exists() {
        return Err(format!("{} not found: cargo build --release -p vaultlet", agent.display()));
    }
    Ok(())
}
