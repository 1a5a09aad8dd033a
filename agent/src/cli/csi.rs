//! `vaultlet csi`: the CSI node plugin (crate `vaultlet-csi`) that gives pods the
//! agent's socket directory as a read-only ephemeral inline volume.

use std::path::PathBuf;

use super::{CmdResult, shutdown_on_signal};

/// Serve the CSI node plugin `csi.vaultlet.io`: pods with a `csi` volume of that
/// driver (`readOnly: true`) get the agent's socket directory, bind-mounted
/// read-only, nosuid, nodev, noexec.
///
/// Runs as root in a privileged container with bidirectional mount propagation on
/// kubelet's pods directory, next to the node-driver-registrar (deploy/daemonset.yaml).
#[derive(clap::Args)]
pub struct Args {
    /// The plugin's socket, where kubelet calls it.
    #[arg(long, env = "CSI_ENDPOINT", default_value = vaultlet_csi::DEFAULT_ENDPOINT)]
    endpoint: PathBuf,

    /// This node's name (the node ID kubelet registers).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,

    /// The agent's socket: its directory is what pods get, and Probe is ready when
    /// it accepts connections.
    #[arg(long, default_value = vaultlet_client::DEFAULT_SOCKET)]
    agent_socket: PathBuf,
}

pub async fn run(args: Args) -> CmdResult {
    let shutdown = shutdown_on_signal()?;
    let config =
        vaultlet_csi::Config { endpoint: args.endpoint, node_id: args.node_name, agent_socket: args.agent_socket };
    vaultlet_csi::serve(config, vaultlet_csi::BindMounter, shutdown.cancelled_owned()).await?;
    tracing::info!("stopped; socket removed");
    Ok(())
}
