//! The process at the other end of a socket connection, and its pod. Read once
//! per connection when it is accepted (the kernel records the peer's
//! credentials at `connect`), then attached to every request on it.
//!
//! A pid can be reused once its process exits, so the pod is read through a
//! pidfd where the kernel offers one (`SO_PEERPIDFD`, Linux 6.5): the pidfd
//! names the very process that connected, and the cgroup read through its pid
//! is trusted only if that process is still alive after the read. On older
//! kernels the process start time is compared before and after the read.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::Connected;

use vaultlet_parse::cgroup;

use super::Caller;
use crate::limits::{PeerKey, Slot};
use crate::metrics::Open;

/// `SO_PEERPIDFD` of asm-generic (x86_64, arm64, ...); the libc crate does not
/// export it yet.
const SO_PEERPIDFD: libc::c_int = 77;

/// Who connected.
#[derive(Clone, Debug)]
pub struct Peer {
    pub pid: Option<i32>,
    pub uid: Option<u32>,
    pub pod: PeerPod,
    /// The connection's last authenticated caller (shared by its requests).
    pub memo: Arc<CallerMemo>,
    /// Set by the first authenticated call: a connection that makes none
    /// within `UNAUTHENTICATED_IDLE` is closed.
    authenticated: Arc<AtomicBool>,
    /// Tells the agent's connections apart (in the order they were accepted).
    pub connection: u64,
}

/// The caller a connection last authenticated, kept while its TokenReview is
/// fresh, so the calls that follow with the same token skip the token work.
#[derive(Debug, Default)]
pub struct CallerMemo(Mutex<Option<(SecretString, Arc<Caller>, Instant)>>);

impl CallerMemo {
    pub fn get(&self, token: &str) -> Option<Arc<Caller>> {
        let memo = self.0.lock().expect("caller memo lock");
        let (known, caller, until) = memo.as_ref()?;
        (known.expose_secret() == token && Instant::now() < *until).then(|| caller.clone())
    }

    pub fn put(&self, token: &str, caller: Arc<Caller>, until: Instant) {
        *self.0.lock().expect("caller memo lock") = Some((SecretString::from(token), caller, until));
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerPod {
    /// The UID of the pod whose container the process runs in.
    Pod(String),
    /// A process of the node itself, or of no pod kubelet knows.
    OutsidePods,
    /// The cgroups could not be read (e.g. the process exited, or no hostPID).
    Unknown(String),
}

impl Peer {
    pub fn key(&self) -> PeerKey {
        match (&self.pod, self.uid) {
            (PeerPod::Pod(uid), _) => PeerKey::Pod(uid.clone()),
            (_, Some(uid)) => PeerKey::User(uid),
            (_, None) => PeerKey::Unidentified,
        }
    }

    pub fn mark_authenticated(&self) {
        self.authenticated.store(true, Ordering::Relaxed);
    }

    /// Reads the credentials of `stream`'s peer and its pod from `proc_root`.
    pub fn of(stream: &UnixStream, proc_root: &Path) -> Peer {
        let cred = stream.peer_cred().ok();
        let pid = cred.and_then(|c| c.pid());
        let pod = match pid {
            None => PeerPod::Unknown("the kernel gave no peer pid".into()),
            Some(pid) => match peer_pidfd(stream) {
                Some(pidfd) => pod_through_pidfd(proc_root, pid, &pidfd),
                None => pod_by_start_time(proc_root, pid),
            },
        };
        static CONNECTIONS: AtomicU64 = AtomicU64::new(1);
        let connection = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        Peer { pid, uid: cred.map(|c| c.uid()), pod, memo: Arc::default(), authenticated: Arc::default(), connection }
    }
}

/// The pidfd of the process that connected, where the kernel offers one.
fn peer_pidfd(stream: &UnixStream) -> Option<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`, an int.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    // SAFETY: on success the kernel handed us a new descriptor we now own.
    (r == 0 && fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the process the pidfd names has not exited (signal 0 only
/// checks); `None` where the call itself is not available (a seccomp filter,
/// valgrind), and the caller must check another way.
fn pidfd_alive(pidfd: &OwnedFd) -> Option<bool> {
    // SAFETY: pidfd_send_signal with signal 0 and no info sends nothing.
    let r = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), 0, std::ptr::null::<libc::siginfo_t>(), 0)
    };
    match (r, std::io::Error::last_os_error().raw_os_error()) {
        (0, _) => Some(true),
        (_, Some(libc::ENOSYS | libc::EPERM)) => None,
        _ => Some(false),
    }
}

fn pod_through_pidfd(proc_root: &Path, pid: i32, pidfd: &OwnedFd) -> PeerPod {
    let pod = read_pod(proc_root, pid);
    match pidfd_alive(pidfd) {
        Some(true) => pod,
        Some(false) => PeerPod::Unknown("the process exited before it could be identified".into()),
        None => pod_by_start_time(proc_root, pid),
    }
}

fn pod_by_start_time(proc_root: &Path, pid: i32) -> PeerPod {
    let before = start_time(proc_root, pid);
    let pod = read_pod(proc_root, pid);
    if before.is_some() && before == start_time(proc_root, pid) {
        pod
    } else {
        PeerPod::Unknown("the process exited (or its pid was reused) while it was identified".into())
    }
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks.
fn start_time(proc_root: &Path, pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

fn read_pod(proc_root: &Path, pid: i32) -> PeerPod {
    let file = proc_root.join(pid.to_string()).join("cgroup");
    match std::fs::read_to_string(&file) {
        Err(e) => PeerPod::Unknown(format!("{}: {e}", file.display())),
        Ok(text) => match cgroup::pod_uid(&text) {
            Ok(Some(uid)) => PeerPod::Pod(uid),
            Ok(None) => PeerPod::OutsidePods,
            Err(e) => PeerPod::Unknown(e.to_string()),
        },
    }
}

/// How long a connection may stay open without one authenticated call.
pub const UNAUTHENTICATED_IDLE: Duration = Duration::from_secs(10);

/// A socket connection that carries its `Peer` into every request's
/// extensions, and holds its place within the connection limits. It ends
/// (reads fail) when no call on it has authenticated within its grace period.
pub struct PeerStream {
    inner: UnixStream,
    peer: Peer,
    /// Pending until the grace period ends; `None` once authenticated.
    grace: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Held while the connection lives: its place among its peer's
    /// connections, and its count among the open ones.
    _held: (Slot, Open),
}

impl PeerStream {
    pub fn new(inner: UnixStream, peer: Peer, slot: Slot, open: Open, grace: Duration) -> PeerStream {
        let grace = Some(Box::pin(tokio::time::sleep(grace)));
        PeerStream { inner, peer, grace, _held: (slot, open) }
    }

    /// Fails the connection once its grace period is over without an
    /// authenticated call (the timer wakes the reader, which is always waiting).
    fn check_grace(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.peer.authenticated.load(Ordering::Relaxed) {
            self.grace = None;
        }
        match self.grace.as_mut().map(|g| g.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no authenticated call within the grace period of a new connection",
            )),
            _ => Ok(()),
        }
    }
}

impl Connected for PeerStream {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.check_grace(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::gauge::Gauge;

    use super::*;

    #[tokio::test]
    async fn reads_its_own_process_through_a_socket_pair() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(peer_pidfd(&a).is_some(), "this kernel has SO_PEERPIDFD");
        let peer = Peer::of(&a, Path::new("/proc"));
        assert_eq!(peer.pid, Some(std::process::id() as i32));
        assert_eq!(peer.uid, Some(nix::unistd::getuid().as_raw()));
        // This test runs outside any pod.
        assert_eq!(peer.pod, PeerPod::OutsidePods);
        assert_eq!(peer.key(), PeerKey::User(nix::unistd::getuid().as_raw()));

        let fake = tempfile::tempdir().unwrap();
        let dir = fake.path().join(std::process::id().to_string());
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("cgroup"), "0::/kubepods/besteffort/pod8dbc5577-d0e2-4706-8787-57d52c03ddf2/abc\n")
            .unwrap();
        assert_eq!(Peer::of(&a, fake.path()).pod, PeerPod::Pod("8dbc5577-d0e2-4706-8787-57d52c03ddf2".into()));
        assert!(matches!(Peer::of(&a, Path::new("/nonexistent")).pod, PeerPod::Unknown(_)));
    }

    #[test]
    fn a_process_that_exited_is_not_identified_through_its_reused_pid() {
        // A child that exits: its pidfd then says so, whatever its pid now names.
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // SAFETY: pidfd_open of a pid we own (not yet reaped).
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut child = child;
        child.wait().unwrap();
        assert_eq!(pidfd_alive(&pidfd), Some(false));
        assert!(matches!(pod_through_pidfd(Path::new("/proc"), pid, &pidfd), PeerPod::Unknown(_)));
        // Our own process is alive, and its start time is stable.
        let me = std::process::id() as i32;
        assert!(start_time(Path::new("/proc"), me).is_some());
        assert_eq!(pod_by_start_time(Path::new("/proc"), me), PeerPod::OutsidePods);
        assert!(matches!(pod_by_start_time(Path::new("/proc"), pid), PeerPod::Unknown(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_an_authenticated_call_ends_after_its_grace() {
        use tokio::io::AsyncReadExt;
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = Peer::of(&a, Path::new("/proc"));
        let admission = crate::limits::Admission::new(Default::default());
        let slot = admission.connection(&peer.key()).unwrap();
        let open = Gauge::default();
        let mut idle = PeerStream::new(a, peer, slot, Open::new(&open), Duration::from_secs(10));
        let mut buf = [0u8; 8];
        let e = idle.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(open.get(), 1, "counted open until dropped");
        drop(idle);
        assert_eq!(open.get(), 0);

        let (c, mut d) = UnixStream::pair().unwrap();
        let peer = Peer::of(&c, Path::new("/proc"));
        let slot = admission.connection(&peer.key()).unwrap();
        peer.mark_authenticated();
        let mut busy = PeerStream::new(c, peer, slot, Open::new(&open), Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(20)).await;
        tokio::io::AsyncWriteExt::write_all(&mut d, b"hi").await.unwrap();
        assert_eq!(busy.read(&mut buf).await.unwrap(), 2, "an authenticated connection stays open");
    }
}
