//! The plugin's errors, and the one place they become gRPC statuses.

use std::path::PathBuf;

use tonic::{Code, Status};

/// A request refused before anything was touched: INVALID_ARGUMENT, with what to
/// change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Invalid {
    #[error("volume_id is required")]
    NoVolumeId,
    #[error("target_path is required")]
    NoTargetPath,
    #[error("target_path must be absolute, got {0:?}")]
    RelativeTargetPath(String),
    #[error("volume_capability is required")]
    NoCapability,
    #[error("volume_capability needs an access type, and only `mount` is served")]
    NoAccessType,
    #[error("block volumes are not served: csi.vaultlet.io mounts a directory (access type `mount`)")]
    Block,
    #[error(
        "the volume must be read-only, so that no pod can remove or replace the agent's socket: \
         set `readOnly: true` in the pod's csi volume (pod.spec.volumes[].csi.readOnly)"
    )]
    NotReadOnly,
    #[error(
        "csi.vaultlet.io serves ephemeral inline volumes only (a pod's `csi` volume; volume_context \
         csi.storage.k8s.io/ephemeral=\"true\", which kubelet sends when the CSIDriver has \
         podInfoOnMount: true), not PersistentVolumes"
    )]
    NotEphemeral,
}

/// What an RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("cannot create the target directory {0}: {1}")]
    CreateTarget(PathBuf, std::io::Error),
    #[error("cannot inspect the target {0}: {1}")]
    Inspect(PathBuf, std::io::Error),
    #[error("cannot bind-mount {0} read-only at {1}: {2}")]
    Mount(PathBuf, PathBuf, std::io::Error),
    #[error("cannot unmount {0}: {1}")]
    Unmount(PathBuf, std::io::Error),
    #[error("cannot remove the target directory {0}: {1}")]
    RemoveTarget(PathBuf, std::io::Error),
}

impl From<CsiError> for Status {
    fn from(e: CsiError) -> Status {
        let code = match e {
            CsiError::Invalid(_) => Code::InvalidArgument,
            // Kubelet retries these with backoff; the message says what failed.
            CsiError::CreateTarget(..)
            | CsiError::Inspect(..)
            | CsiError::Mount(..)
            | CsiError::Unmount(..)
            | CsiError::RemoveTarget(..) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

/// Why the plugin could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    #[error("{0}: {1}")]
    Socket(PathBuf, std::io::Error),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotSocket(PathBuf),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}
