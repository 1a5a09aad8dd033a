//! The plugin's own Unix socket: kubelet and the node-driver-registrar call it
//! there, as root; nobody else may.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::error::ServeError;
use crate::mount::Mounter;
use crate::proto::identity_server::IdentityServer;
use crate::proto::node_server::NodeServer;
use crate::service::Plugin;

/// Serves the Identity and Node services on `config.endpoint` until `shutdown`
/// completes, then removes the socket.
pub async fn serve<M: Mounter>(
    config: Config,
    mounter: M,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    config.check()?;
    let endpoint = config.endpoint.clone();
    let listener = bind(&endpoint)?;
    tracing::info!(
        endpoint = %endpoint.display(),
        node = %config.node_id,
        publishes = %config.socket_dir().display(),
        "CSI node plugin {} serving",
        crate::DRIVER_NAME
    );
    let plugin = Arc::new(Plugin::new(config, mounter));
    let served = tonic::transport::Server::builder()
        .add_service(IdentityServer::from_arc(plugin.clone()))
        .add_service(NodeServer::from_arc(plugin))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(&endpoint);
    Ok(served?)
}

/// Binds `socket`, for its owner only. A socket already there is replaced:
/// kubelet dials the path for each call, so the newest plugin serves (a
/// DaemonSet runs one per node, and a restarted one finds its predecessor's).
fn bind(socket: &Path) -> Result<UnixListener, ServeError> {
    let err = |e| ServeError::Socket(socket.to_owned(), e);
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if !meta.file_type().is_socket() => return Err(ServeError::NotSocket(socket.to_owned())),
        Ok(_) => std::fs::remove_file(socket).map_err(err)?,
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        Err(_) => {}
    }
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let listener = UnixListener::bind(socket).map_err(err)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}
