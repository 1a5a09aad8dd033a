//! The process at the other end of a socket connection, and its pod. Read once
//! per connection when it is accepted (the kernel records the peer's
//! credentials at `connect`), then attached to every request on it.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use secrecy::{ExposeSecret, SecretString};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::Connected;

use vaultlet_parse::cgroup;

use super::Caller;
use crate::limits::Slot;

/// Who connected.
#[derive(Clone, Debug)]
pub struct Peer {
    pub pid: Option<i32>,
    pub uid: Option<u32>,
    pub pod: PeerPod,
    /// The connection's last authenticated caller (shared by its requests).
    pub memo: Arc<CallerMemo>,
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
    /// Whose limits a connection counts against: its pod, or outside pods the
    /// user its process runs as.
    pub fn key(&self) -> String {
        match (&self.pod, self.uid) {
            (PeerPod::Pod(uid), _) => format!("pod {uid}"),
            (_, Some(uid)) => format!("uid {uid} (outside pods)"),
            (_, None) => "an unidentified process".to_owned(),
        }
    }

    /// Reads the credentials of `stream`'s peer and its pod from `proc_root`.
    pub fn of(stream: &UnixStream, proc_root: &Path) -> Peer {
        let cred = stream.peer_cred().ok();
        let pid = cred.and_then(|c| c.pid());
        let pod = match pid {
            None => PeerPod::Unknown("the kernel gave no peer pid".into()),
            Some(pid) => {
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
        };
        Peer { pid, uid: cred.map(|c| c.uid()), pod, memo: Arc::default() }
    }
}

/// A socket connection that carries its `Peer` into every request's
/// extensions, and holds its place within the connection limits.
pub struct PeerStream {
    inner: UnixStream,
    peer: Peer,
    _slot: Slot,
}

impl PeerStream {
    pub fn new(inner: UnixStream, peer: Peer, slot: Slot) -> PeerStream {
        PeerStream { inner, peer, _slot: slot }
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
    use super::*;

    #[tokio::test]
    async fn reads_its_own_process_through_a_socket_pair() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = Peer::of(&a, Path::new("/proc"));
        assert_eq!(peer.pid, Some(std::process::id() as i32));
        assert_eq!(peer.uid, Some(nix::unistd::getuid().as_raw()));
        // This test runs outside any pod.
        assert_eq!(peer.pod, PeerPod::OutsidePods);

        let fake = tempfile::tempdir().unwrap();
        let dir = fake.path().join(std::process::id().to_string());
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("cgroup"), "0::/kubepods/besteffort/pod8dbc5577-d0e2-4706-8787-57d52c03ddf2/abc\n")
            .unwrap();
        assert_eq!(Peer::of(&a, fake.path()).pod, PeerPod::Pod("8dbc5577-d0e2-4706-8787-57d52c03ddf2".into()));
        assert!(matches!(Peer::of(&a, Path::new("/nonexistent")).pod, PeerPod::Unknown(_)));
    }
}
