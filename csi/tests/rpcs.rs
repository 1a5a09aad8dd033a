//! The RPCs over real gRPC on a Unix socket, with a fake mounter: each request
//! kubelet (or anybody able to reach the socket) could send, and what it does.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tonic::Code;
use tonic::transport::Channel;
use vaultlet_csi::proto::identity_client::IdentityClient;
use vaultlet_csi::proto::node_client::NodeClient;
use vaultlet_csi::proto::volume_capability::{AccessType, BlockVolume, MountVolume};
use vaultlet_csi::proto::*;
use vaultlet_csi::{Config, Mounter, TargetState};

/// Mounts as a map from target to state, and every call made, in order.
#[derive(Clone, Default)]
struct FakeMounter(Arc<Mutex<Fake>>);

#[derive(Default)]
struct Fake {
    targets: HashMap<PathBuf, TargetState>,
    calls: Vec<&'static str>,
    fail_bind: bool,
}

impl FakeMounter {
    fn calls(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().calls.clone()
    }

    fn state(&self, target: &Path) -> TargetState {
        self.0.lock().unwrap().targets.get(target).copied().unwrap_or(TargetState::Unpublished)
    }

    fn set(&self, target: &Path, state: TargetState) {
        self.0.lock().unwrap().targets.insert(target.to_owned(), state);
    }
}

impl Mounter for FakeMounter {
    fn state(&self, _source: &Path, target: &Path) -> io::Result<TargetState> {
        Ok(FakeMounter::state(self, target))
    }

    fn bind_read_only(&self, _source: &Path, target: &Path) -> io::Result<()> {
        let mut fake = self.0.lock().unwrap();
        fake.calls.push("bind_read_only");
        if fake.fail_bind {
            return Err(io::Error::from_raw_os_error(1));
        }
        fake.targets.insert(target.to_owned(), TargetState::Published);
        Ok(())
    }

    fn unmount(&self, target: &Path) -> io::Result<bool> {
        let mut fake = self.0.lock().unwrap();
        fake.calls.push("unmount");
        Ok(fake.targets.remove(target).is_some())
    }
}

/// A plugin serving on a socket in a temp dir, and clients of it.
struct Plugin {
    dir: tempfile::TempDir,
    mounter: FakeMounter,
    node: NodeClient<Channel>,
    identity: IdentityClient<Channel>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Plugin {
    async fn start() -> Plugin {
        Self::start_with(FakeMounter::default()).await
    }

    async fn start_with(mounter: FakeMounter) -> Plugin {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = dir.path().join("plugin/csi.sock");
        std::fs::create_dir(dir.path().join("pods")).unwrap();
        let config = Config {
            endpoint: endpoint.clone(),
            node_id: "node-1".into(),
            agent_socket: dir.path().join("agent/vaultlet.sock"),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(vaultlet_csi::serve(config, mounter.clone(), async {
            let _ = stopped.await;
        }));
        while !endpoint.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // The agent's client is a plain gRPC channel over a Unix socket; the CSI
        // services ride it as well.
        let channel = vaultlet_client::Client::connect(&endpoint).await.unwrap().channel();
        Plugin {
            dir,
            mounter,
            node: NodeClient::new(channel.clone()),
            identity: IdentityClient::new(channel),
            _stop: stop,
        }
    }

    /// Where kubelet would ask for a pod's volume (its parent exists, as kubelet
    /// creates it).
    fn target(&self) -> PathBuf {
        self.dir.path().join("pods/volume")
    }

    /// The request kubelet sends for a pod's `csi` volume with `readOnly: true`.
    fn publish_request(&self) -> NodePublishVolumeRequest {
        NodePublishVolumeRequest {
            volume_id: "csi-0123456789abcdef".into(),
            target_path: self.target().to_str().unwrap().into(),
            volume_capability: Some(VolumeCapability { access_type: Some(AccessType::Mount(MountVolume {})) }),
            readonly: true,
            volume_context: HashMap::from([
                ("csi.storage.k8s.io/ephemeral".into(), "true".into()),
                ("csi.storage.k8s.io/pod.namespace".into(), "shop".into()),
                ("csi.storage.k8s.io/pod.name".into(), "web-1".into()),
            ]),
        }
    }

    fn unpublish_request(&self) -> NodeUnpublishVolumeRequest {
        NodeUnpublishVolumeRequest {
            volume_id: "csi-0123456789abcdef".into(),
            target_path: self.target().to_str().unwrap().into(),
        }
    }

    async fn publish(&mut self, req: NodePublishVolumeRequest) -> Result<(), tonic::Status> {
        self.node.node_publish_volume(req).await.map(drop)
    }

    async fn unpublish(&mut self, req: NodeUnpublishVolumeRequest) -> Result<(), tonic::Status> {
        self.node.node_unpublish_volume(req).await.map(drop)
    }
}

type Edit = fn(&mut NodePublishVolumeRequest);

#[tokio::test]
async fn publish_refuses_every_request_but_a_read_only_ephemeral_mount_and_touches_nothing() {
    let cases: [(&str, Edit, &str); 10] = [
        ("no volume id", |r| r.volume_id.clear(), "volume_id is required"),
        ("no target path", |r| r.target_path.clear(), "target_path is required"),
        ("relative target path", |r| r.target_path = "pods/volume".into(), "target_path must be absolute"),
        ("no capability", |r| r.volume_capability = None, "volume_capability is required"),
        (
            "no access type",
            |r| r.volume_capability = Some(VolumeCapability { access_type: None }),
            "only `mount` is served",
        ),
        (
            "block volume",
            |r| r.volume_capability = Some(VolumeCapability { access_type: Some(AccessType::Block(BlockVolume {})) }),
            "block volumes are not served",
        ),
        ("writable", |r| r.readonly = false, "set `readOnly: true` in the pod's csi volume"),
        (
            "no pod info (a PersistentVolume, or podInfoOnMount off)",
            |r| r.volume_context.clear(),
            "ephemeral inline volumes only",
        ),
        (
            "not ephemeral",
            |r| {
                r.volume_context.insert("csi.storage.k8s.io/ephemeral".into(), "false".into());
            },
            "ephemeral inline volumes only",
        ),
        (
            "writable and not ephemeral: the first problem is named",
            |r| {
                r.readonly = false;
                r.volume_context.clear();
            },
            "readOnly: true",
        ),
    ];
    let mut plugin = Plugin::start().await;
    for (name, edit, message) in cases {
        let mut req = plugin.publish_request();
        edit(&mut req);
        let status = plugin.publish(req).await.expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(status.message().contains(message), "{name}: {}", status.message());
    }
    assert!(plugin.mounter.calls().is_empty(), "a refused request mounts nothing");
    assert!(!plugin.target().exists(), "a refused request creates no directory");
}

#[tokio::test]
async fn publish_mounts_once_and_again_is_ok() {
    let mut plugin = Plugin::start().await;
    plugin.publish(plugin.publish_request()).await.unwrap();
    assert!(plugin.target().is_dir(), "the plugin creates the target directory");
    assert_eq!(plugin.mounter.state(&plugin.target()), TargetState::Published);
    plugin.publish(plugin.publish_request()).await.unwrap();
    assert_eq!(plugin.mounter.calls(), ["bind_read_only"], "already published: nothing mounted again");
}

#[tokio::test]
async fn publish_replaces_a_writable_mount_of_the_socket_directory() {
    let mut plugin = Plugin::start().await;
    std::fs::create_dir(plugin.target()).unwrap();
    plugin.mounter.set(&plugin.target(), TargetState::Writable);
    plugin.publish(plugin.publish_request()).await.unwrap();
    assert_eq!(plugin.mounter.calls(), ["unmount", "bind_read_only"]);
    assert_eq!(plugin.mounter.state(&plugin.target()), TargetState::Published);
}

#[tokio::test]
async fn a_failed_mount_is_internal_and_names_both_paths() {
    let mounter = FakeMounter::default();
    mounter.0.lock().unwrap().fail_bind = true;
    let mut plugin = Plugin::start_with(mounter).await;
    let status = plugin.publish(plugin.publish_request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    let message = status.message();
    assert!(message.contains("cannot bind-mount") && message.contains("agent") && message.contains("pods/volume"));
    assert!(message.contains("Operation not permitted"), "{message}");
    assert_eq!(plugin.mounter.state(&plugin.target()), TargetState::Unpublished);
}

#[tokio::test]
async fn unpublish_unmounts_removes_the_directory_and_again_is_ok() {
    let mut plugin = Plugin::start().await;
    plugin.publish(plugin.publish_request()).await.unwrap();
    plugin.unpublish(plugin.unpublish_request()).await.unwrap();
    assert_eq!(plugin.mounter.state(&plugin.target()), TargetState::Unpublished);
    assert!(!plugin.target().exists(), "the target directory is removed");
    plugin.unpublish(plugin.unpublish_request()).await.unwrap();
    assert_eq!(plugin.mounter.calls(), ["bind_read_only", "unmount", "unmount"]);
}

#[tokio::test]
async fn unpublish_refuses_bad_requests_and_leaves_what_is_not_ours() {
    let mut plugin = Plugin::start().await;
    let cases: [(NodeUnpublishVolumeRequest, &str); 3] = [
        (
            NodeUnpublishVolumeRequest { volume_id: String::new(), ..plugin.unpublish_request() },
            "volume_id is required",
        ),
        (
            NodeUnpublishVolumeRequest { target_path: String::new(), ..plugin.unpublish_request() },
            "target_path is required",
        ),
        (
            NodeUnpublishVolumeRequest { target_path: "pods/volume".into(), ..plugin.unpublish_request() },
            "must be absolute",
        ),
    ];
    for (req, message) in cases {
        let status = plugin.unpublish(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(message), "{}", status.message());
    }
    assert!(plugin.mounter.calls().is_empty());

    // A directory with content is not a volume of ours: it stays, and kubelet hears why.
    std::fs::create_dir(plugin.target()).unwrap();
    std::fs::write(plugin.target().join("data"), "keep").unwrap();
    let status = plugin.unpublish(plugin.unpublish_request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert!(status.message().contains("cannot remove the target directory"), "{}", status.message());
    assert_eq!(std::fs::read_to_string(plugin.target().join("data")).unwrap(), "keep");
}

#[tokio::test]
async fn identity_and_node_info_declare_an_ephemeral_only_node_plugin() {
    let mut plugin = Plugin::start().await;
    let info = plugin.identity.get_plugin_info(GetPluginInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.name, vaultlet_csi::DRIVER_NAME);
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let caps = plugin.identity.get_plugin_capabilities(GetPluginCapabilitiesRequest {}).await.unwrap();
    assert!(caps.into_inner().capabilities.is_empty(), "no controller service, no topology");
    let caps = plugin.node.node_get_capabilities(NodeGetCapabilitiesRequest {}).await.unwrap();
    assert!(caps.into_inner().capabilities.is_empty(), "no staging, no stats, no expansion");
    let node = plugin.node.node_get_info(NodeGetInfoRequest {}).await.unwrap().into_inner();
    assert_eq!((node.node_id.as_str(), node.max_volumes_per_node), ("node-1", 0));
}

#[tokio::test]
async fn probe_is_ready_once_the_agents_socket_accepts_connections() {
    let mut plugin = Plugin::start().await;
    let probe = plugin.identity.probe(ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(false), "no agent yet");
    std::fs::create_dir(plugin.dir.path().join("agent")).unwrap();
    let _agent = tokio::net::UnixListener::bind(plugin.dir.path().join("agent/vaultlet.sock")).unwrap();
    let probe = plugin.identity.probe(ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_anything_else_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = |endpoint: PathBuf| Config {
        endpoint,
        node_id: "node-1".into(),
        agent_socket: dir.path().join("agent/vaultlet.sock"),
    };
    // Left by a plugin that was killed.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    vaultlet_csi::serve(config(stale.clone()), FakeMounter::default(), std::future::ready(())).await.unwrap();
    assert!(!stale.exists(), "served, then removed on shutdown");

    let file = dir.path().join("file");
    std::fs::write(&file, "not a socket").unwrap();
    let err =
        vaultlet_csi::serve(config(file.clone()), FakeMounter::default(), std::future::ready(())).await.unwrap_err();
    assert!(err.to_string().contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a socket");
}
