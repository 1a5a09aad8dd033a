//! What `vaultlet csi`'s flags decide, checked once at start-up.

use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Config {
    /// The plugin's own socket (kubelet and the node-driver-registrar call it).
    pub endpoint: PathBuf,
    /// This node's Kubernetes name: NodeGetInfo's node ID.
    pub node_id: String,
    /// The agent's socket. Its directory is what pods get, and Probe connects to it.
    pub agent_socket: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the node name is empty (set --node-name or NODE_NAME)")]
    NoNodeName,
    #[error("{0}: the agent's socket must be an absolute path with a directory to publish")]
    AgentSocket(PathBuf),
    #[error("{0}: the plugin's endpoint must be an absolute path")]
    Endpoint(PathBuf),
}

impl Config {
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.node_id.is_empty() {
            return Err(ConfigError::NoNodeName);
        }
        // A relative path would be resolved against the plugin's working directory,
        // which is not where kubelet or a pod would look.
        if !self.agent_socket.is_absolute() || self.agent_socket.parent().is_none_or(|d| d == Path::new("/")) {
            return Err(ConfigError::AgentSocket(self.agent_socket.clone()));
        }
        if !self.endpoint.is_absolute() {
            return Err(ConfigError::Endpoint(self.endpoint.clone()));
        }
        Ok(())
    }

    /// The directory every volume shows: the agent's socket directory.
    pub fn socket_dir(&self) -> &Path {
        self.agent_socket.parent().expect("checked: the agent's socket has a directory")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: &str, node: &str, agent_socket: &str) -> Config {
        Config { endpoint: endpoint.into(), node_id: node.into(), agent_socket: agent_socket.into() }
    }

    #[test]
    fn publishes_the_directory_of_the_agents_socket() {
        let c = config("/csi/csi.sock", "node-1", "/run/vaultlet/vaultlet.sock");
        c.check().unwrap();
        assert_eq!(c.socket_dir(), Path::new("/run/vaultlet"));
    }

    #[test]
    fn refuses_what_would_publish_the_wrong_place() {
        let cases = [
            (config("/csi/csi.sock", "", "/run/vaultlet/vaultlet.sock"), "node name is empty"),
            (config("/csi/csi.sock", "n", "vaultlet.sock"), "must be an absolute path"),
            (config("/csi/csi.sock", "n", "/vaultlet.sock"), "with a directory to publish"),
            (config("csi.sock", "n", "/run/vaultlet/vaultlet.sock"), "endpoint must be an absolute path"),
        ];
        for (c, message) in cases {
            let err = c.check().unwrap_err().to_string();
            assert!(err.contains(message), "{c:?}: {err}");
        }
    }
}
