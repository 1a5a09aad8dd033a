//! The mount calls the RPCs make, behind a trait so that tests can run the RPCs
//! without root; `BindMounter` is the real thing.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::statvfs::{FsFlags, statvfs};

/// What a target path shows, compared with the directory we publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetState {
    /// Not our directory: nothing of ours is mounted there.
    Unpublished,
    /// Our directory, mounted read-only, nosuid, nodev, noexec: published.
    Published,
    /// Our directory, but without all of those flags: a publish interrupted
    /// between its bind and its remount.
    Writable,
}

pub trait Mounter: Send + Sync + 'static {
    /// What `target` shows.
    fn state(&self, source: &Path, target: &Path) -> io::Result<TargetState>;

    /// Mounts `source` at `target`, read-only, nosuid, nodev, noexec. On an error
    /// nothing stays mounted.
    fn bind_read_only(&self, source: &Path, target: &Path) -> io::Result<()>;

    /// Unmounts whatever is mounted at `target`; `false` when nothing was.
    fn unmount(&self, target: &Path) -> io::Result<bool>;
}

/// Real bind mounts (needs CAP_SYS_ADMIN in the mount namespace kubelet sees).
pub struct BindMounter;

/// The flags that make a published directory safe to hand to a pod.
const HARDENED: MsFlags =
    MsFlags::MS_RDONLY.union(MsFlags::MS_NOSUID).union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

/// Mounts stacked on one target that `unmount` takes off before it gives up: a
/// target holds one mount of ours, more only after a publish raced another.
const MAX_STACKED: usize = 8;

impl Mounter for BindMounter {
    fn state(&self, source: &Path, target: &Path) -> io::Result<TargetState> {
        let target_meta = match std::fs::metadata(target) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(TargetState::Unpublished),
            Err(e) => return Err(e),
        };
        // A directory has one name (no hard links), so the same device and inode at
        // another path means a bind mount of it.
        let source_meta = std::fs::metadata(source)?;
        if (target_meta.dev(), target_meta.ino()) != (source_meta.dev(), source_meta.ino()) {
            return Ok(TargetState::Unpublished);
        }
        let flags = statvfs(target)?.flags();
        let hardened = FsFlags::ST_RDONLY | FsFlags::ST_NOSUID | FsFlags::ST_NODEV | FsFlags::ST_NOEXEC;
        Ok(if flags.contains(hardened) { TargetState::Published } else { TargetState::Writable })
    }

    fn bind_read_only(&self, source: &Path, target: &Path) -> io::Result<()> {
        // A bind mount ignores the flags passed with it: read-only takes a second
        // call, a remount of the bind. Not recursive: nothing mounted below the
        // socket directory is handed out.
        mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
        let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | HARDENED;
        if let Err(e) = mount(None::<&str>, target, None::<&str>, remount, None::<&str>) {
            // Never leave a writable view of the socket directory behind.
            let _ = umount2(target, MntFlags::MNT_DETACH);
            return Err(e.into());
        }
        Ok(())
    }

    fn unmount(&self, target: &Path) -> io::Result<bool> {
        let mut unmounted = false;
        for _ in 0..MAX_STACKED {
            match umount2(target, MntFlags::empty()) {
                Ok(()) => unmounted = true,
                // Not a mount point (any more), or no such path: done.
                Err(Errno::EINVAL | Errno::ENOENT) => return Ok(unmounted),
                // Still in use (a process of the pod has its working directory
                // there, say): detach it now, the kernel frees it once unused.
                Err(Errno::EBUSY) => {
                    umount2(target, MntFlags::MNT_DETACH)?;
                    unmounted = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(io::Error::other(format!("more than {MAX_STACKED} mounts stacked on {}", target.display())))
    }
}
