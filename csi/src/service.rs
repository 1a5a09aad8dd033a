//! The RPCs: Identity (who the plugin is, whether the agent answers) and Node
//! (publish and unpublish the socket directory). Every request check is in
//! `check_publish` and `check_unpublish`, before anything is touched.

use std::path::Path;

use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::error::{CsiError, Invalid};
use crate::mount::{Mounter, TargetState};
use crate::proto::identity_server::Identity;
use crate::proto::node_server::Node;
use crate::proto::volume_capability::AccessType;
use crate::proto::*;

/// What kubelet puts in `volume_context` when the CSIDriver has podInfoOnMount.
const EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";
const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
const POD_NAME: &str = "csi.storage.k8s.io/pod.name";

pub struct Plugin<M> {
    config: Config,
    mounter: M,
}

impl<M: Mounter> Plugin<M> {
    pub fn new(config: Config, mounter: M) -> Plugin<M> {
        Plugin { config, mounter }
    }

    fn publish(&self, req: &NodePublishVolumeRequest) -> Result<(), CsiError> {
        let target = check_publish(req)?;
        let source = self.config.socket_dir();
        let state = self.mounter.state(source, target).map_err(|e| CsiError::Inspect(target.into(), e))?;
        let (namespace, pod) = (context(req, POD_NAMESPACE), context(req, POD_NAME));
        match state {
            TargetState::Published => {
                tracing::info!(volume_id = %req.volume_id, %namespace, %pod, target = %target.display(), "already published");
                return Ok(());
            }
            TargetState::Writable => {
                tracing::warn!(target = %target.display(), "found the socket directory mounted writable; mounting it again read-only");
                self.mounter.unmount(target).map_err(|e| CsiError::Unmount(target.into(), e))?;
            }
            TargetState::Unpublished => {}
        }
        // The CO creates the target's parent; the plugin creates the target itself.
        match std::fs::create_dir(target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(CsiError::CreateTarget(target.into(), e)),
        }
        self.mounter.bind_read_only(source, target).map_err(|e| CsiError::Mount(source.into(), target.into(), e))?;
        tracing::info!(volume_id = %req.volume_id, %namespace, %pod, target = %target.display(), "published the agent's socket directory read-only");
        Ok(())
    }

    fn unpublish(&self, req: &NodeUnpublishVolumeRequest) -> Result<(), CsiError> {
        let target = check_unpublish(req)?;
        let unmounted = self.mounter.unmount(target).map_err(|e| CsiError::Unmount(target.into(), e))?;
        // Only an empty directory goes: what is not ours (a mount point, content)
        // makes this fail, and stays.
        match std::fs::remove_dir(target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CsiError::RemoveTarget(target.into(), e)),
        }
        tracing::info!(volume_id = %req.volume_id, target = %target.display(), unmounted, "unpublished");
        Ok(())
    }
}

/// The target path of a publish request kubelet may have sent for one of our
/// volumes; every other request is refused, with what to change.
fn check_publish(req: &NodePublishVolumeRequest) -> Result<&Path, Invalid> {
    let access = req.volume_capability.as_ref().map(|c| c.access_type.as_ref());
    let ephemeral = req.volume_context.get(EPHEMERAL).map(String::as_str);
    match (req.volume_id.as_str(), req.target_path.as_str(), access, req.readonly, ephemeral) {
        ("", ..) => Err(Invalid::NoVolumeId),
        (_, "", ..) => Err(Invalid::NoTargetPath),
        (_, target, ..) if !Path::new(target).is_absolute() => Err(Invalid::RelativeTargetPath(target.into())),
        (_, _, None, ..) => Err(Invalid::NoCapability),
        (_, _, Some(None), ..) => Err(Invalid::NoAccessType),
        (_, _, Some(Some(AccessType::Block(_))), ..) => Err(Invalid::Block),
        (_, _, _, false, _) => Err(Invalid::NotReadOnly),
        (_, _, _, _, ephemeral) if ephemeral != Some("true") => Err(Invalid::NotEphemeral),
        (_, target, Some(Some(AccessType::Mount(_))), true, _) => Ok(Path::new(target)),
    }
}

fn check_unpublish(req: &NodeUnpublishVolumeRequest) -> Result<&Path, Invalid> {
    match (req.volume_id.as_str(), req.target_path.as_str()) {
        ("", _) => Err(Invalid::NoVolumeId),
        (_, "") => Err(Invalid::NoTargetPath),
        (_, target) if !Path::new(target).is_absolute() => Err(Invalid::RelativeTargetPath(target.into())),
        (_, target) => Ok(Path::new(target)),
    }
}

/// A pod-info value of the request, for logs ("" when kubelet sent none).
fn context<'a>(req: &'a NodePublishVolumeRequest, key: &str) -> &'a str {
    req.volume_context.get(key).map_or("", String::as_str)
}

#[tonic::async_trait]
impl<M: Mounter> Identity for Plugin<M> {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: crate::DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(GetPluginCapabilitiesResponse::default()))
    }

    /// Ready when the agent's socket accepts a connection: a volume published
    /// before that shows a directory without a socket (the clients wait for it).
    /// The answer has no room for a reason, so the log line gives it.
    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        let socket = &self.config.agent_socket;
        let ready = match tokio::net::UnixStream::connect(socket).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(socket = %socket.display(), error = %e, "not ready: the agent's socket does not accept connections");
                false
            }
        };
        Ok(Response::new(ProbeResponse { ready: Some(ready) }))
    }
}

#[tonic::async_trait]
impl<M: Mounter> Node for Plugin<M> {
    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        self.publish(request.get_ref()).map_err(Status::from)?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        self.unpublish(request.get_ref()).map_err(Status::from)?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(NodeGetCapabilitiesResponse::default()))
    }

    async fn node_get_info(&self, _: Request<NodeGetInfoRequest>) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse { node_id: self.config.node_id.clone(), max_volumes_per_node: 0 }))
    }
}
