//! The HTTPS listener: `POST /mutate` answers a review, `GET /healthz` says the
//! listener serves. Each connection runs in its own task, its TLS handshake
//! under a deadline, so one slow client holds up no other.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::crypto::CryptoProvider;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::error::ServeError;
use crate::mutate::Injection;
use crate::tls::{Tls, server_config};
use crate::{HEALTH_PATH, MUTATE_PATH, review};

/// What the command line decided.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub tls: Tls,
    pub injection: Injection,
}

/// A review carries one object, and the API server stores none larger than
/// etcd's request limit (1.5 MiB by default); this leaves room for the
/// review's own fields and for clusters that raise the limit.
const MAX_BODY: usize = 8 << 20;
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// At shutdown, how long reviews in flight may take to be answered.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves until `shutdown` completes, then lets reviews in flight finish.
pub async fn serve(
    config: Config,
    provider: Arc<CryptoProvider>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let acceptor = TlsAcceptor::from(Arc::new(server_config(&config.tls, provider)?));
    let listener = TcpListener::bind(config.listen).await.map_err(|e| ServeError::Listen(config.listen, e))?;
    let local = listener.local_addr().map_err(|e| ServeError::Listen(config.listen, e))?;
    tracing::info!(address = %local, "serving admission reviews at https://{local}{MUTATE_PATH}");
    let injection = Arc::new(config.injection);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: the next accept may work.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (acceptor, injection, watcher) = (acceptor.clone(), injection.clone(), graceful.watcher());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, "TLS handshake failed: {e}"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let service = hyper::service::service_fn(move |request| answer(request, injection.clone()));
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("reviews still in flight after {DRAIN:?}; stopping anyway");
    }
    Ok(())
}

async fn answer(request: Request<Incoming>, injection: Arc<Injection>) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: Bytes| {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        response
    };
    Ok(match (request.method(), request.uri().path()) {
        (&Method::GET, HEALTH_PATH) => reply(StatusCode::OK, Bytes::from_static(b"ok\n")),
        (&Method::POST, MUTATE_PATH) => match Limited::new(request.into_body(), MAX_BODY).collect().await {
            Ok(body) => {
                let answer = review(&body.to_bytes(), &injection);
                // A review's answer is plain data: serializing it cannot fail.
                let json = serde_json::to_vec(&answer).unwrap_or_default();
                let mut response = reply(StatusCode::OK, json.into());
                let json_type = hyper::header::HeaderValue::from_static("application/json");
                response.headers_mut().insert(hyper::header::CONTENT_TYPE, json_type);
                response
            }
            Err(e) => reply(StatusCode::BAD_REQUEST, format!("cannot read the review: {e}\n").into()),
        },
        (_, MUTATE_PATH | HEALTH_PATH) => reply(StatusCode::METHOD_NOT_ALLOWED, Bytes::new()),
        _ => reply(StatusCode::NOT_FOUND, Bytes::new()),
    })
}
