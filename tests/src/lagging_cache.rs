//! An HTTPS front for the API server that can make its watch cache lag: the
//! reads served from that cache (`resourceVersion=0`) of one Secret answer
//! with an older copy, as a second API server behind the one whose watch
//! announced a change would. One API server alone never shows it: the cache
//! that feeds its watch also answers the read. The front presents the API
//! server's own certificate, so a kubeconfig of the cluster's CA trusts it;
//! everything else it passes on, one upstream connection per client one.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Secret;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

type Answer = hyper::Response<Either<Full<Bytes>, Incoming>>;

/// The Secret whose cached reads lag, and what they answer.
struct Lag {
    path: String,
    body: Bytes,
}

#[derive(Default)]
struct Reads {
    lag: Mutex<Option<Lag>>,
    /// Reads of the lagging Secret's path that went past the cache (to etcd).
    quorum: AtomicUsize,
}

pub struct LaggingCache {
    port: u16,
    reads: Arc<Reads>,
    task: tokio::task::JoinHandle<()>,
}

impl LaggingCache {
    /// In front of the API server on `upstream` (loopback) of the control
    /// plane in `dir`: its `pki/apiserver.{crt,key}` and `ca.crt`.
    pub async fn start(dir: &Path, upstream: u16) -> LaggingCache {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain: Vec<CertificateDer> = CertificateDer::pem_file_iter(dir.join("pki/apiserver.crt"))
            .expect("the API server's certificate")
            .collect::<Result<_, _>>()
            .expect("the API server's certificate");
        let key = PrivateKeyDer::from_pem_file(dir.join("pki/apiserver.key")).expect("the API server's key");
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("the API server's certificate and key");
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(dir.join("ca.crt")).expect("the CA") {
            roots.add(ca.expect("the CA")).expect("the CA");
        }
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (acceptor, connector) = (TlsAcceptor::from(Arc::new(server)), TlsConnector::from(Arc::new(client)));

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the front");
        let port = listener.local_addr().expect("front address").port();
        let reads = Arc::new(Reads::default());
        let shared = reads.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, acceptor.clone(), connector.clone(), upstream, shared.clone()));
            }
        });
        LaggingCache { port, reads, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// From now on the cache's reads of `secret` answer with it as it is here.
    pub fn lag_at(&self, secret: &Secret) {
        let (namespace, name) = (secret.metadata.namespace.as_deref(), secret.metadata.name.as_deref());
        let path = format!("/api/v1/namespaces/{}/secrets/{}", namespace.expect("namespace"), name.expect("name"));
        let body = Bytes::from(serde_json::to_vec(secret).expect("a Secret as JSON"));
        *self.reads.lag.lock().expect("lag lock") = Some(Lag { path, body });
        self.reads.quorum.store(0, Ordering::SeqCst);
    }

    /// Reads of the lagging Secret since `lag_at` that skipped the cache.
    pub fn quorum_reads(&self) -> usize {
        self.reads.quorum.load(Ordering::SeqCst)
    }
}

impl Drop for LaggingCache {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays one client connection over an upstream connection of its own,
/// but for the lagging Secret's cached reads, which it answers itself.
async fn relay(client: TcpStream, acceptor: TlsAcceptor, connector: TlsConnector, upstream: u16, reads: Arc<Reads>) {
    let Ok(client) = acceptor.accept(client).await else { return };
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let Ok(server) = connector.connect(name, server).await else { return };
    let Ok((sender, connection)) = hyper::client::conn::http1::handshake(TokioIo::new(server)).await else { return };
    tokio::spawn(connection);
    // HTTP/1.1 answers one request at a time: the lock only orders them.
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let (sender, reads) = (sender.clone(), reads.clone());
        async move {
            if let Some(body) = reads.answer(&request) {
                return Ok::<Answer, hyper::Error>(hyper::Response::new(Either::Left(Full::new(body))));
            }
            let mut sender = sender.lock().await;
            sender.ready().await?;
            Ok(sender.send_request(request).await?.map(Either::Right))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(client), service).await;
}

impl Reads {
    /// The lagging copy when `request` is a cached read of its Secret;
    /// counts the Secret's other reads.
    fn answer(&self, request: &hyper::Request<Incoming>) -> Option<Bytes> {
        let lag = self.lag.lock().expect("lag lock");
        let lag = lag.as_ref().filter(|l| request.method() == hyper::Method::GET && request.uri().path() == l.path)?;
        let cached = request.uri().query().unwrap_or_default().split('&').any(|p| p == "resourceVersion=0");
        if cached {
            return Some(lag.body.clone());
        }
        self.quorum.fetch_add(1, Ordering::SeqCst);
        None
    }
}
