//! The gRPC edge: the `Secrets` service, health and reflection over a Unix
//! socket. Requests flow down (identity -> policy -> cache); typed errors come
//! back up and become statuses in one place (`error`).
//!
//! A call passes, in order:
//! 1. the accept loop (`socket`): the peer's process and pod, read once per
//!    connection; a process outside any pod refused (`--peer-binding enforce`);
//!    the connection limits; a connection with no authenticated call within
//!    10 s closed;
//! 2. HTTP/2 limits per connection: streams, header size, flow-control windows;
//! 3. the deadline: headers, body and answer within `REQUEST_DEADLINE`;
//! 4. call latency by method and status code (`layers`), refusals included;
//! 5. per-pod admission (`layers`): call rate and calls waiting;
//! 6. the handler (`service`): authenticate -> authorize (`authorize`, pure) ->
//!    load -> audit committed -> values encoded (`encode`) and sent; an open
//!    watch is authorized again on every wake-up (`watch`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use vaultlet_client::proto;
use vaultlet_client::server::secrets_server::SecretsServer;

mod authorize;
mod coalesce;
mod encode;
mod error;
mod layers;
mod read_turns;
mod service;
mod socket;
mod watch;

pub use error::{MAX_REFS, ServiceError};
pub use service::{Parts, SecretsService};
pub use socket::bind;

/// Largest request accepted; requests are lists of names, so this is generous.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// HTTP/2 settings of each connection: a process multiplexes its calls and
/// watches over one connection; headers carry a token of about 1 KiB.
const MAX_STREAMS_PER_CONNECTION: u32 = 100;
const MAX_HEADER_BYTES: u32 = 8 * 1024;
/// Flow-control windows bound what a peer can make the agent buffer.
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 256 * 1024;
/// A call's headers, body and answer must all arrive within this (a watch:
/// until its stream opens). Covers a TokenReview and a Transit call with retry.
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);
const KEEPALIVE: Duration = Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long open connections get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("socket {0}: {1}")]
    Socket(PathBuf, std::io::Error),
    #[error("another agent is already serving on {0}; stop it or choose another --socket")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotSocket(PathBuf),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the API, health and reflection on `listener` until `shutdown`, then
/// removes the socket file.
pub async fn serve(
    listener: UnixListener,
    socket: &Path,
    proc_root: PathBuf,
    service: SecretsService,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let parts = service.parts().clone();
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<SecretsServer<SecretsService>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let secrets = SecretsServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES);
    let acceptor = socket::Acceptor {
        proc_root,
        auth: parts.auth.clone(),
        admission: parts.admission.clone(),
        metrics: parts.metrics.clone(),
        audit: parts.audit.clone(),
        fan_out: parts.cache.fan_out(),
    };

    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_max_header_list_size(MAX_HEADER_BYTES)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        // Pings, so that a peer that went away frees its connection.
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .timeout(REQUEST_DEADLINE)
        .layer(layers::TimeCalls::new(&parts.metrics))
        .layer(layers::AdmitCalls { admission: parts.admission.clone(), metrics: parts.metrics.clone() })
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(secrets)
        .serve_with_incoming_shutdown(socket::incoming(listener, acceptor), shutdown.clone().cancelled_owned());
    tokio::pin!(server);
    let result = tokio::select! {
        r = &mut server => r,
        () = async { shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::warn!("connections still open {SHUTDOWN_GRACE:?} after shutdown; closing them");
            Ok(())
        }
    };
    let _ = std::fs::remove_file(socket);
    Ok(result?)
}
