//! Puts a process in a real cgroup whose path names a pod, so that its
//! `/proc/<pid>/cgroup` reads as it does under kubelet (cgroupfs driver,
//! BestEffort QoS). Needs root, as the end-to-end tests run.

use std::path::PathBuf;
use std::process::Command;

pub struct PodCgroup {
    dir: PathBuf,
    root: PathBuf,
    holds_this_process: bool,
}

impl PodCgroup {
    /// `<hierarchy>/kubepods/besteffort/pod<uid>/<container>`.
    pub fn create(pod_uid: &str) -> PodCgroup {
        let root = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.procs").exists())
            .expect("no writable cgroup hierarchy under /sys/fs/cgroup");
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let container = format!("{:016x}{:016x}", std::process::id(), n);
        let dir = root.join("kubepods/besteffort").join(format!("pod{pod_uid}")).join(container);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create cgroup {} (the end-to-end tests need root): {e}", dir.display()));
        PodCgroup { dir, root, holds_this_process: false }
    }

    /// Moves this very process into the cgroup (the benchmark acts as a pod);
    /// it moves back when the cgroup is dropped.
    pub fn enter(&mut self) {
        std::fs::write(self.dir.join("cgroup.procs"), std::process::id().to_string())
            .unwrap_or_else(|e| panic!("cannot enter cgroup {}: {e}", self.dir.display()));
        self.holds_this_process = true;
    }

    /// `program args...`, started inside this cgroup.
    pub fn command(&self, program: &std::path::Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && shift && exec "$@""#)
            .arg(&self.dir)
            .arg("--")
            .arg(program)
            .args(args);
        cmd
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        if self.holds_this_process {
            let _ = std::fs::write(self.root.join("cgroup.procs"), std::process::id().to_string());
        }
        // Empty once its processes have exited; the parents stay for other tests.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
