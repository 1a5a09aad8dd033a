//! The socket and its accept loop: each connection's peer (process, pod) read
//! once, refused at once when it could never be served (a process outside any
//! pod, under `--peer-binding enforce`), and held within the connection limits.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio::net::UnixListener;

use super::ServeError;
use super::coalesce::Coalesce;
use crate::audit::{AuditLog, Decision, Record};
use crate::fanout::FanOut;
use crate::identity::Authenticator;
use crate::identity::peer::{Peer, PeerStream, UNAUTHENTICATED_IDLE};
use crate::limits::{Admission, PeerKey, RateLimiter};
use crate::metrics::{Metrics, Open};

const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Audit records of refused connections, per peer: a burst, then one a second;
/// the refusals in between are counted in the next record (`repeated`).
const REFUSAL_RECORDS_BURST: u32 = 20;
const REFUSAL_RECORDS_PER_SECOND: u32 = 1;

/// Binds `socket` (replacing a stale one, never a live one), readable and
/// writable by owner and group only.
pub async fn bind(socket: &Path) -> Result<UnixListener, ServeError> {
    let err = |e| ServeError::Socket(socket.to_owned(), e);
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(socket).await.is_ok() {
                return Err(ServeError::InUse(socket.to_owned()));
            }
            std::fs::remove_file(socket).map_err(err)?;
        }
        Ok(_) => return Err(ServeError::NotSocket(socket.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::create_dir_all(dir).map_err(err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).map_err(err)?;
    }
    let listener = UnixListener::bind(socket).map_err(err)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    Ok(listener)
}

/// What the accept loop needs.
pub struct Acceptor {
    pub proc_root: PathBuf,
    pub auth: Arc<Authenticator>,
    pub admission: Arc<Admission>,
    pub metrics: Arc<Metrics>,
    pub audit: Option<AuditLog>,
    pub fan_out: Arc<FanOut>,
}

/// Accepted connections. An accept error (out of file descriptors) never ends
/// serving: tonic would stop on it.
pub fn incoming(
    listener: UnixListener,
    acceptor: Acceptor,
) -> impl Stream<Item = Result<Coalesce<PeerStream>, std::io::Error>> {
    let refusals = Arc::new(Refusals::new());
    let acceptor = Arc::new(acceptor);
    futures::stream::unfold(listener, move |listener| {
        let (acceptor, refusals) = (acceptor.clone(), refusals.clone());
        async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let peer = Peer::of(&stream, &acceptor.proc_root);
                        if let Some(refused) = acceptor.auth.refuse_at_accept(&peer) {
                            acceptor.metrics.refused_connections.inc();
                            if acceptor.admission.should_warn() {
                                tracing::warn!(pid = ?peer.pid, uid = ?peer.uid, reason = %refused, "connection refused (one line per 10 s)");
                            }
                            refusals.audit(&acceptor.audit, &peer, refused.to_string());
                            continue;
                        }
                        match acceptor.admission.connection(&peer.key()) {
                            Ok(slot) => {
                                let open = Open::new(&acceptor.metrics.connections);
                                let stream = PeerStream::new(stream, peer, slot, open, UNAUTHENTICATED_IDLE);
                                return Some((Ok(Coalesce::new(stream, acceptor.fan_out.clone())), listener));
                            }
                            Err(refused) => {
                                acceptor.metrics.refused_connections.inc();
                                if acceptor.admission.should_warn() {
                                    tracing::warn!(pid = ?peer.pid, reason = %refused, "connection refused (one line per 10 s)");
                                }
                            }
                        }
                    }
                    Err(e) => {
                        if acceptor.admission.should_warn() {
                            tracing::warn!(error = %e, "cannot accept connections (one line per 10 s); retrying");
                        }
                        tokio::time::sleep(ACCEPT_RETRY).await;
                    }
                }
            }
        }
    })
}

/// The audit records of refused connections, limited per peer so a flood of
/// connection attempts cannot flood the log; none goes uncounted.
struct Refusals {
    limiter: RateLimiter,
    repeated: Mutex<HashMap<PeerKey, u64>>,
}

impl Refusals {
    fn new() -> Refusals {
        Refusals {
            limiter: RateLimiter::new(REFUSAL_RECORDS_BURST, REFUSAL_RECORDS_PER_SECOND),
            repeated: Mutex::default(),
        }
    }

    fn audit(&self, audit: &Option<AuditLog>, peer: &Peer, reason: String) {
        let Some(log) = audit else { return };
        let key = peer.key();
        let mut repeated = self.repeated.lock().expect("refusals lock");
        if !self.limiter.allow(&key) {
            *repeated.entry(key).or_default() += 1;
            return;
        }
        let mut record = Record {
            method: "connect",
            decision: Decision::Refused,
            peer_pid: peer.pid,
            peer_uid: peer.uid,
            repeated: repeated.remove(&key).unwrap_or_default(),
            ..Record::default()
        };
        record.set_reason(&reason);
        let log = log.clone();
        // Nothing waits for it: no value is released by a refusal.
        tokio::spawn(async move { log.commit(record).await });
    }
}
