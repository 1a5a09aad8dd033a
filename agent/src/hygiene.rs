//! Process hygiene for an agent that holds plaintext: no core dumps, pages
//! locked in memory where the limit allows, a socket directory nobody else can
//! write to.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Core dumps off (and ptrace by other users: a non-dumpable process cannot be
/// attached to), then lock current and future pages in RAM so plaintext is not
/// swapped out. Locking needs CAP_IPC_LOCK or a high enough RLIMIT_MEMLOCK;
/// without it the agent runs anyway and says so once.
pub fn harden() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot turn core dumps off");
    }
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    match lock_pages() {
        Ok(()) => LOCKED.store(true, Ordering::Relaxed),
        Err(e) => {
            tracing::info!(error = %e, "memory not locked (needs CAP_IPC_LOCK or a higher RLIMIT_MEMLOCK): decrypted values may be swapped out if the node swaps")
        }
    }
}

/// Whether `harden` locked the agent's pages.
static LOCKED: AtomicBool = AtomicBool::new(false);

/// Locks the pages present now and every page as it is first touched.
fn lock_pages() -> nix::Result<()> {
    use nix::sys::mman::{MlockAllFlags, mlockall};
    // MCL_ONFAULT (Linux 4.4+, not in nix): lock pages as they are touched, so
    // locking does not fault in (and count against RSS) every reserved page.
    const MCL_ONFAULT: std::ffi::c_int = 4;
    mlockall(MlockAllFlags::from_bits_retain(
        (MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE).bits() | MCL_ONFAULT,
    ))
}

/// Thousands of connections need thousands of descriptors: use what the hard
/// limit allows (the soft limit is often 1024).
pub fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// How often freed memory is handed back to the system.
#[cfg(target_env = "gnu")]
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Allocations from this size up get their own mapping, unmapped when freed.
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD: std::ffi::c_int = 128 * 1024;

/// glibc keeps freed heap pages resident: after a burst (thousands of watch
/// streams opening, a flood of calls) the agent would keep its peak size for
/// good. `malloc_trim` returns what is free; it takes well under a millisecond.
///
/// And glibc raises its mmap threshold to the size of each large block freed,
/// so after the first page of the Secrets list (about 400 KiB of JSON per 500
/// Secrets) every page's body came from the heap, between blocks that stay:
/// the heap kept that much more per page for good (measured: 3 MiB more with
/// 50,000 Secrets than with a fixed threshold). A fixed threshold keeps such
/// blocks out of the heap.
#[cfg(target_env = "gnu")]
pub fn return_freed_memory() {
    // SAFETY: mallopt only changes the allocator's thresholds; it is thread-safe.
    if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) } != 1 {
        tracing::warn!("cannot set the allocator's mmap threshold");
    }
    tokio::spawn(async {
        let mut tick = tokio::time::interval(TRIM_EVERY);
        let mut freed = FreedSinceTrim::new(free_bytes());
        loop {
            tick.tick().await;
            if !LOCKED.load(Ordering::Relaxed) {
                // SAFETY: malloc_trim only releases free memory; it is thread-safe.
                unsafe { libc::malloc_trim(0) };
            } else if freed.worth_returning(free_bytes()) {
                trim_locked();
                freed = FreedSinceTrim::new(free_bytes());
            }
        }
    });
}

/// Free memory worth unlocking the agent's pages for (see `trim_locked`).
#[cfg(target_env = "gnu")]
const UNLOCK_TO_RETURN: usize = 4 << 20;

/// The allocator's free bytes, resident or not.
#[cfg(target_env = "gnu")]
fn free_bytes() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's statistics; it is thread-safe.
    unsafe { libc::mallinfo2() }.fordblks
}

/// How much the allocator freed since the last trim: its free bytes above
/// their lowest point since then (blocks reused, then freed again, count).
#[cfg(target_env = "gnu")]
struct FreedSinceTrim {
    lowest: usize,
}

#[cfg(target_env = "gnu")]
impl FreedSinceTrim {
    fn new(free: usize) -> FreedSinceTrim {
        FreedSinceTrim { lowest: free }
    }

    fn worth_returning(&mut self, free: usize) -> bool {
        self.lowest = self.lowest.min(free);
        free - self.lowest >= UNLOCK_TO_RETURN
    }
}

/// The kernel refuses to drop locked pages (`madvise` fails on them), so
/// under `mlockall` `malloc_trim` returns nothing: memory freed after a burst
/// of 10,000 streams stayed resident, 62 MiB against 22 MiB unlocked
/// (`vaultlet-bench --only streams`, after the streams closed). Pages are
/// unlocked for the trim, then what is still resident is locked again: a
/// window of a few milliseconds, and only after the allocator freed
/// `UNLOCK_TO_RETURN` more than it held free at the last trim.
#[cfg(target_env = "gnu")]
fn trim_locked() {
    let started = std::time::Instant::now();
    if let Err(e) = nix::sys::mman::munlockall() {
        tracing::warn!(error = %e, "cannot unlock memory to return freed pages");
        return;
    }
    // SAFETY: malloc_trim only releases free memory; it is thread-safe.
    unsafe { libc::malloc_trim(0) };
    if let Err(e) = lock_pages() {
        LOCKED.store(false, Ordering::Relaxed);
        tracing::warn!(error = %e, "memory no longer locked: decrypted values may be swapped out if the node swaps");
    }
    tracing::debug!(took = ?started.elapsed(), "freed memory returned");
}

/// musl's allocator (the static build of scripts/image) unmaps freed memory by
/// itself and has no `malloc_trim`.
#[cfg(not(target_env = "gnu"))]
pub fn return_freed_memory() {}

/// Refuses a socket directory others may write to (they could replace the socket).
pub fn check_socket_dir(socket: &Path) -> Result<(), String> {
    let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) else { return Ok(()) };
    let Ok(meta) = std::fs::metadata(dir) else { return Ok(()) };
    if meta.permissions().mode() & 0o002 != 0 {
        return Err(format!(
            "socket directory {} is world-writable: anyone on the node could replace the socket; use a directory such as /run/vaultlet (mode 0750)",
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_writable_socket_dirs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        assert!(check_socket_dir(&dir.path().join("s.sock")).is_ok());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(check_socket_dir(&dir.path().join("s.sock")).unwrap_err().contains("world-writable"));
    }

    #[cfg(target_env = "gnu")]
    #[test]
    fn locked_memory_is_trimmed_only_once_enough_more_was_freed() {
        let mut freed = FreedSinceTrim::new(10 << 20);
        assert!(!freed.worth_returning((10 << 20) + UNLOCK_TO_RETURN - 1));
        // Blocks reused, then freed again: what was freed since counts.
        assert!(!freed.worth_returning(2 << 20));
        assert!(freed.worth_returning((2 << 20) + UNLOCK_TO_RETURN));
    }
}
