//! A loopback TCP proxy in front of the API server, for the faults a real
//! server cannot be made to produce on demand: hung (connections stay open,
//! nothing moves) and dropped connections. TLS passes through untouched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Pass,
    Hang,
}

pub struct Proxy {
    port: u16,
    mode: watch::Sender<Mode>,
    /// Bumped to close every connection open now.
    drops: watch::Sender<u64>,
    /// Bytes sent from the server to the clients, in all.
    down: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards `127.0.0.1:<its port>` to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (mode, _) = watch::channel(Mode::Pass);
        let (drops, _) = watch::channel(0u64);
        let down = Arc::new(AtomicU64::new(0));
        let (m, d, counted) = (mode.clone(), drops.clone(), down.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, target, m.subscribe(), d.subscribe(), counted.clone()));
            }
        });
        Proxy { port, mode, drops, down, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Nothing moves on any connection, old or new, until `release`.
    pub fn hang(&self) {
        self.mode.send_replace(Mode::Hang);
    }

    pub fn release(&self) {
        self.mode.send_replace(Mode::Pass);
    }

    /// Closes every connection open now (a dropped watch, for one).
    pub fn drop_connections(&self) {
        self.drops.send_modify(|n| *n += 1);
    }

    /// Bytes the server has sent its clients through the proxy so far (TLS
    /// records included).
    pub fn bytes_to_clients(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.drop_connections();
    }
}

async fn forward(
    mut client: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    mut drops: watch::Receiver<u64>,
    down_bytes: Arc<AtomicU64>,
) {
    drops.mark_unchanged();
    let Ok(mut server) = TcpStream::connect(target).await else { return };
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let (mut up, mut down) = ([0u8; 16 * 1024], [0u8; 16 * 1024]);
    loop {
        if *mode.borrow_and_update() == Mode::Hang {
            tokio::select! {
                r = mode.changed() => if r.is_err() { return },
                _ = drops.changed() => return,
            }
            continue;
        }
        // Reads are cancel-safe: a read that loses the race loses no bytes.
        tokio::select! {
            n = cr.read(&mut up) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if sw.write_all(&up[..n]).await.is_err() { return },
            },
            n = sr.read(&mut down) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    down_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    if cw.write_all(&down[..n]).await.is_err() { return }
                }
            },
            r = mode.changed() => if r.is_err() { return },
            _ = drops.changed() => return,
        }
    }
}
