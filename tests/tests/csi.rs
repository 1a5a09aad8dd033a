//! The CSI node plugin with real mounts (as root). `vaultlet csi` runs in a mount
//! namespace of its own (`unshare --mount --propagation private`), so its mounts
//! never reach this process or the machine, and publishes the socket directory of
//! a `vaultlet dev` agent. Everything that looks through the mount runs in the
//! plugin's namespace (`nsenter`), as a pod's container sees kubelet's mounts.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use vaultlet_csi::proto::node_client::NodeClient;
use vaultlet_csi::proto::volume_capability::{AccessType, MountVolume};
use vaultlet_csi::proto::{NodePublishVolumeRequest, NodeUnpublishVolumeRequest, VolumeCapability};
use vaultlet_tests::agent::{AgentProcess, vaultlet_bin};
use vaultlet_tests::stack::repo_root;

const VOLUME_ID: &str = "csi-5f1c0ffee";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reaches_the_agent_through_the_read_only_mount_and_nothing_can_change_the_socket() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test makes real bind mounts (in a mount namespace of its own): run it as root"
    );
    let dir = tempfile::tempdir().unwrap();
    let agent_socket = dir.path().join("agent/vaultlet.sock");
    let _agent = AgentProcess::dev(&repo_root().join("examples/secrets"), &agent_socket);
    let endpoint = dir.path().join("plugin/csi.sock");
    let plugin = AgentProcess::launch_wrapped(
        &["unshare", "--mount", "--propagation", "private"],
        &["csi", "--endpoint", path(&endpoint), "--agent-socket", path(&agent_socket)],
        &[("NODE_NAME", "node-1")],
        Some(&dir.path().join("plugin.log")),
        &endpoint,
    );
    let in_plugin = PluginNamespace(plugin.pid());
    let vaultlet = vaultlet_bin();
    let vaultlet = path(&vaultlet);
    // The agent's client is a plain gRPC channel over a Unix socket; the CSI
    // services ride it as well.
    let mut node = NodeClient::new(vaultlet_client::Client::connect(&endpoint).await.unwrap().channel());

    // As kubelet lays it out: it creates the pod's volume directory, the plugin
    // the target in it.
    let target = dir.path().join("pods/0c5e7d1a/volumes/kubernetes.io~csi/vaultlet/mount");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    node.node_publish_volume(publish(&target)).await.unwrap();
    node.node_publish_volume(publish(&target)).await.expect("publishing again is a no-op");
    let mounts = in_plugin.mounts_at(&target);
    assert_eq!(mounts.len(), 1, "one mount after two publishes: {mounts:?}");
    for flag in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(mounts[0].split(',').any(|f| f == flag), "mount options {} lack {flag}", mounts[0]);
    }
    assert!(
        std::fs::read_dir(&target).unwrap().next().is_none(),
        "outside the plugin's namespace the target is an empty directory: its mount stayed there"
    );

    // A client reads a secret through the mount.
    let socket = target.join("vaultlet.sock");
    let read = in_plugin.run(vaultlet, &["get", "--socket", path(&socket), "app"]);
    assert!(read.status.success(), "get through the mount: {}", String::from_utf8_lossy(&read.stderr));
    let values: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
    assert!(values["app"].as_object().is_some_and(|app| !app.is_empty()), "{values}");

    // Nobody can remove, rename or replace the socket there, plant a file, or bind
    // a socket of their own: the mount is read-only.
    let planted = target.join("planted");
    let evil = target.join("evil.sock");
    let secrets = repo_root().join("examples/secrets");
    let attempts: [(&str, &[&str]); 5] = [
        ("rm", &["-f", path(&socket)]),
        ("mv", &[path(&socket), path(&planted)]),
        ("touch", &[path(&planted)]),
        ("ln", &["-sf", "/tmp/elsewhere.sock", path(&socket)]),
        (vaultlet, &["dev", "--secrets-dir", path(&secrets), "--socket", path(&evil)]),
    ];
    for (program, args) in attempts {
        let out = in_plugin.run(program, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("Read-only file system"), "{program} {args:?}: {err}");
    }
    let again = in_plugin.run(vaultlet, &["get", "--socket", path(&socket), "app"]);
    assert!(again.status.success(), "the socket is still the agent's: {}", String::from_utf8_lossy(&again.stderr));

    node.node_unpublish_volume(unpublish(&target)).await.unwrap();
    assert!(in_plugin.mounts_at(&target).is_empty(), "unmounted");
    assert!(!target.exists(), "the target directory is removed");
    node.node_unpublish_volume(unpublish(&target)).await.expect("unpublishing again is a no-op");
    assert!(agent_socket.exists(), "the agent's own socket is untouched");
}

/// What kubelet sends for a pod's `csi` volume of driver csi.vaultlet.io with
/// `readOnly: true`, short of the pod info the plugin only logs.
fn publish(target: &Path) -> NodePublishVolumeRequest {
    let ephemeral = HashMap::from([("csi.storage.k8s.io/ephemeral".into(), "true".into())]);
    let mount = VolumeCapability { access_type: Some(AccessType::Mount(MountVolume {})) };
    NodePublishVolumeRequest {
        volume_id: VOLUME_ID.into(),
        target_path: path(target).into(),
        volume_capability: Some(mount),
        readonly: true,
        volume_context: ephemeral,
    }
}

fn unpublish(target: &Path) -> NodeUnpublishVolumeRequest {
    NodeUnpublishVolumeRequest { volume_id: VOLUME_ID.into(), target_path: path(target).into() }
}

/// The mount namespace of the plugin's process.
struct PluginNamespace(u32);

impl PluginNamespace {
    /// Runs a program there.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["--target", &self.0.to_string(), "--mount", "--", program])
            .args(args)
            .env("VAULTLET_LOG", "warn")
            .output()
            .expect("run nsenter")
    }

    /// The mount options of each mount at `target` there (mountinfo's sixth
    /// field), from the bottom of a stack to its top.
    fn mounts_at(&self, target: &Path) -> Vec<String> {
        let mountinfo = std::fs::read_to_string(format!("/proc/{}/mountinfo", self.0)).unwrap();
        mountinfo
            .lines()
            .map(|line| line.split(' ').collect::<Vec<_>>())
            .filter(|fields| fields.len() > 5 && Path::new(fields[4]) == target)
            .map(|fields| fields[5].to_owned())
            .collect()
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}
