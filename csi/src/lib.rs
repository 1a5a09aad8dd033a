//! vaultlet's CSI node plugin: a pod that names the driver `csi.vaultlet.io` in a
//! `csi` volume (an ephemeral inline volume) gets the agent's socket directory,
//! bind-mounted read-only. The pod reaches the agent through it and can neither
//! remove nor replace the socket; no app pod needs a hostPath.
//!
//! Three parts, as in spiffe-csi-driver: `config` (what the command line
//! decided), `server` (the plugin's own Unix socket, where kubelet calls it) and
//! `service` (the RPCs, and the one place a request is checked). Mounts go
//! through the `Mounter` trait, so the RPCs run over real gRPC in tests with a
//! fake; `BindMounter` makes the real ones.

mod config;
mod error;
mod mount;
mod server;
mod service;

pub use config::{Config, ConfigError};
pub use error::ServeError;
pub use mount::{BindMounter, Mounter, TargetState};
pub use server::serve;

/// The driver's name: the `CSIDriver` object's, and what pods write in
/// `volumes[].csi.driver`.
pub const DRIVER_NAME: &str = "csi.vaultlet.io";

/// Where kubelet looks for a plugin's socket by convention; the
/// node-driver-registrar tells kubelet this path.
pub const DEFAULT_ENDPOINT: &str = "/var/lib/kubelet/plugins/csi.vaultlet.io/csi.sock";

/// The `csi.v1` subset of `proto/csi/v1/node_plugin.proto`.
pub mod proto {
    tonic::include_proto!("csi.v1");
}
