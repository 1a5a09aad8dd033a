//! `vaultlet prepare-dirs`: hands host directories to the agent's user before it
//! starts (the DaemonSet's init container).

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::CmdResult;

/// Owner and group may enter; nobody else. Never world-writable: anyone could
/// replace the socket (the agent refuses to start on such a directory).
const MODE: u32 = 0o750;

/// Create each directory if it is missing and give it to the agent's user and
/// group, mode 0750. Idempotent: a directory already so is left alone.
///
/// kubelet creates a missing hostPath directory as root:root 0755, where the
/// non-root agent can create neither its socket nor its audit log. Needs
/// CAP_CHOWN and CAP_FOWNER, only when something is to change.
#[derive(clap::Args)]
pub struct Args {
    /// The agent's user ID.
    #[arg(long)]
    uid: u32,

    /// The agent's group ID (callers join it to reach the socket).
    #[arg(long)]
    gid: u32,

    /// The directories.
    #[arg(required = true, value_name = "DIR")]
    dirs: Vec<PathBuf>,
}

pub async fn run(args: Args) -> CmdResult {
    for dir in &args.dirs {
        let outcome = prepare(dir, args.uid, args.gid).map_err(|e| format!("{}: {e}", dir.display()))?;
        println!("{}: owner {}:{}, mode {MODE:04o} ({outcome})", dir.display(), args.uid, args.gid);
    }
    Ok(())
}

fn prepare(dir: &Path, uid: u32, gid: u32) -> std::io::Result<&'static str> {
    let existing = std::fs::symlink_metadata(dir).ok();
    if existing.as_ref().is_some_and(|m| m.file_type().is_symlink()) {
        return Err(std::io::Error::other("a symbolic link, not a directory: refusing to follow it"));
    }
    DirBuilder::new().recursive(true).mode(MODE).create(dir)?;
    // Through a descriptor opened without following a symlink: a link planted at
    // the path since cannot make us hand over another directory either.
    let file = OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(dir)?;
    let meta = file.metadata()?;
    let mut changed = false;
    if (meta.uid(), meta.gid()) != (uid, gid) {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        changed = true;
    }
    // chown clears set-id bits, so the mode is checked after it.
    if file.metadata()?.mode() & 0o7777 != MODE {
        file.set_permissions(std::fs::Permissions::from_mode(MODE))?;
        changed = true;
    }
    Ok(match (existing.is_some(), changed) {
        (false, _) => "created",
        (true, true) => "changed",
        (true, false) => "unchanged",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's user and group in deploy/: handing a directory to them takes
    /// root, as the tests have (README: Testing).
    const AGENT: u32 = 10750;

    fn owner_and_mode(dir: &Path) -> (u32, u32, u32) {
        let meta = std::fs::metadata(dir).unwrap();
        (meta.uid(), meta.gid(), meta.mode() & 0o7777)
    }

    #[test]
    fn creates_hands_over_and_then_leaves_alone() {
        assert!(nix::unistd::geteuid().is_root(), "this test hands a directory to another user: run it as root");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run/vaultlet");
        assert_eq!(prepare(&dir, AGENT, AGENT).unwrap(), "created");
        assert_eq!(owner_and_mode(&dir), (AGENT, AGENT, 0o750));
        assert_eq!(prepare(&dir, AGENT, AGENT).unwrap(), "unchanged");

        // As kubelet creates a missing hostPath directory: root's, 0755.
        let kubelets = tmp.path().join("log");
        std::fs::create_dir(&kubelets).unwrap();
        std::fs::set_permissions(&kubelets, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(prepare(&kubelets, AGENT, AGENT).unwrap(), "changed");
        assert_eq!(owner_and_mode(&kubelets), (AGENT, AGENT, 0o750));

        // Already the agent's, but world-writable.
        std::fs::set_permissions(&kubelets, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(prepare(&kubelets, AGENT, AGENT).unwrap(), "changed");
        assert_eq!(owner_and_mode(&kubelets).2, 0o750);
    }

    #[test]
    fn refuses_a_symlink_in_place_of_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = tmp.path().join("run-vaultlet");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let err = prepare(&link, AGENT, AGENT).unwrap_err();
        assert!(err.to_string().contains("a symbolic link"), "{err}");
        assert_eq!(owner_and_mode(&elsewhere).2, 0o755, "the link's target is untouched");
    }
}
