//! `vaultlet serve` configuration: flags, their environment variables, and an
//! optional YAML file (keys are the flag names: `vault-addr: https://...`).
//! Precedence: flag, then environment, then file, then default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::identity::PeerBinding;
use crate::limits::Limits;

pub const DEFAULT_AUDIENCE: &str = "vaultlet";
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9750";
pub const DEFAULT_JWT_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// A duration written as `5s`, `250ms`, `2m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s)
            .map(HumanDuration)
            .map_err(|e| format!("{s:?} is not a duration such as 5s or 250ms: {e}"))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Every setting of `serve`, each optional until defaults are applied.
#[derive(clap::Args, Deserialize, Default, Debug, Clone)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServeArgs {
    /// YAML file with any of these settings (keys are the flag names).
    #[arg(long, env = "VAULTLET_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Unix socket to serve on [default: /run/vaultlet/vaultlet.sock].
    #[arg(long, env = "VAULTLET_SOCKET")]
    pub socket: Option<PathBuf>,

    /// This node's name (from the downward API): callers' pods must run on it.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Namespaces whose managed Secrets are served, comma-separated [default: all].
    #[arg(long, env = "VAULTLET_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Option<Vec<String>>,

    /// HTTP address for /healthz, /readyz and /metrics [default: 0.0.0.0:9750].
    #[arg(long, env = "VAULTLET_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Audience callers' ServiceAccount tokens must carry [default: vaultlet].
    #[arg(long, env = "VAULTLET_AUDIENCE")]
    pub audience: Option<String>,

    /// How long a TokenReview answer is reused, never past the token's expiry [default: 10s].
    #[arg(long, env = "VAULTLET_TOKEN_REVIEW_CACHE_TTL", value_name = "DURATION")]
    pub token_review_cache_ttl: Option<HumanDuration>,

    /// Vault/OpenBao address.
    #[arg(long, env = "VAULT_ADDR")]
    pub vault_addr: Option<String>,

    /// CA certificate (PEM) to verify Vault/OpenBao's TLS certificate.
    #[arg(long, env = "VAULT_CACERT")]
    pub vault_cacert: Option<PathBuf>,

    /// Mount of Vault's Kubernetes auth method [default: kubernetes].
    #[arg(long, env = "VAULTLET_VAULT_AUTH_MOUNT")]
    pub vault_auth_mount: Option<String>,

    /// Role of the Kubernetes auth method the agent logs in with.
    #[arg(long, env = "VAULTLET_VAULT_AUTH_ROLE")]
    pub vault_auth_role: Option<String>,

    /// The agent's own ServiceAccount token for the Vault login
    /// [default: /var/run/secrets/kubernetes.io/serviceaccount/token].
    #[arg(long, env = "VAULTLET_VAULT_AUTH_JWT_FILE")]
    pub vault_auth_jwt_file: Option<PathBuf>,

    /// Mount of the Transit secrets engine [default: transit].
    #[arg(long, env = "VAULTLET_TRANSIT_MOUNT")]
    pub transit_mount: Option<String>,

    /// Deadline of every Vault/OpenBao call [default: 5s].
    #[arg(long, env = "VAULTLET_VAULT_TIMEOUT", value_name = "DURATION")]
    pub vault_timeout: Option<HumanDuration>,

    /// Whether the token's pod must be the calling process's pod [default: enforce].
    #[arg(long, env = "VAULTLET_PEER_BINDING", value_enum)]
    pub peer_binding: Option<PeerBinding>,

    /// Where the node's processes are listed (the DaemonSet runs with hostPID) [default: /proc].
    #[arg(long, env = "VAULTLET_PROC_ROOT")]
    pub proc_root: Option<PathBuf>,

    /// Audit log file (JSON lines, hash-chained); `-` for standard output [default: -].
    #[arg(long, env = "VAULTLET_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,

    /// Agent-wide policy file of cross-namespace grants (YAML).
    #[arg(long, env = "VAULTLET_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,

    /// Connections the agent accepts in all [default: 4096].
    #[arg(long, env = "VAULTLET_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Connections one peer (a pod; outside pods, a user) may hold [default: 128].
    #[arg(long, env = "VAULTLET_MAX_CONNECTIONS_PER_PEER")]
    pub max_connections_per_peer: Option<usize>,

    /// Watch streams one peer may hold open [default: 1024].
    #[arg(long, env = "VAULTLET_MAX_STREAMS_PER_PEER")]
    pub max_streams_per_peer: Option<usize>,
}

/// The settings `serve` runs with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub socket: PathBuf,
    pub node_name: String,
    pub namespaces: Vec<String>,
    pub admin_listen: SocketAddr,
    pub audience: String,
    pub token_review_cache_ttl: Duration,
    pub vault_addr: String,
    pub vault_cacert: Option<PathBuf>,
    pub vault_auth_mount: String,
    pub vault_auth_role: String,
    pub vault_auth_jwt_file: PathBuf,
    pub transit_mount: String,
    pub vault_timeout: Duration,
    pub peer_binding: PeerBinding,
    pub proc_root: PathBuf,
    pub audit_log: PathBuf,
    pub policy_file: Option<PathBuf>,
    pub limits: Limits,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("config file {0}: {1}")]
    Parse(PathBuf, String),
    #[error("{0} is required: pass --{0} (or set {1})")]
    Missing(&'static str, &'static str),
    #[error("--{0}: {1}")]
    Invalid(&'static str, String),
}

impl ServeArgs {
    /// Fills what the flags and environment left unset from `other` (the file).
    fn or(self, other: ServeArgs) -> ServeArgs {
        ServeArgs {
            config: self.config,
            socket: self.socket.or(other.socket),
            node_name: self.node_name.or(other.node_name),
            namespaces: self.namespaces.or(other.namespaces),
            admin_listen: self.admin_listen.or(other.admin_listen),
            audience: self.audience.or(other.audience),
            token_review_cache_ttl: self.token_review_cache_ttl.or(other.token_review_cache_ttl),
            vault_addr: self.vault_addr.or(other.vault_addr),
            vault_cacert: self.vault_cacert.or(other.vault_cacert),
            vault_auth_mount: self.vault_auth_mount.or(other.vault_auth_mount),
            vault_auth_role: self.vault_auth_role.or(other.vault_auth_role),
            vault_auth_jwt_file: self.vault_auth_jwt_file.or(other.vault_auth_jwt_file),
            transit_mount: self.transit_mount.or(other.transit_mount),
            vault_timeout: self.vault_timeout.or(other.vault_timeout),
            peer_binding: self.peer_binding.or(other.peer_binding),
            proc_root: self.proc_root.or(other.proc_root),
            audit_log: self.audit_log.or(other.audit_log),
            policy_file: self.policy_file.or(other.policy_file),
            max_connections: self.max_connections.or(other.max_connections),
            max_connections_per_peer: self.max_connections_per_peer.or(other.max_connections_per_peer),
            max_streams_per_peer: self.max_streams_per_peer.or(other.max_streams_per_peer),
        }
    }

    /// Merges the config file in, applies defaults, checks what is required.
    pub fn resolve(self) -> Result<ServeConfig, ConfigError> {
        let merged = match self.config.clone() {
            Some(path) => self.or(read_file(&path)?),
            None => self,
        };
        let namespaces: Vec<String> = merged
            .namespaces
            .unwrap_or_default()
            .into_iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        if let Some(bad) = namespaces.iter().find(|n| !vaultlet_client::reference::is_dns_label(n)) {
            return Err(ConfigError::Invalid("namespaces", format!("{bad:?} is not a namespace name")));
        }
        let audience = merged.audience.unwrap_or_else(|| DEFAULT_AUDIENCE.into());
        let defaults = Limits::default();
        if audience.is_empty() {
            return Err(ConfigError::Invalid("audience", "must not be empty".into()));
        }
        Ok(ServeConfig {
            socket: merged.socket.unwrap_or_else(|| vaultlet_client::DEFAULT_SOCKET.into()),
            node_name: merged
                .node_name
                .filter(|n| !n.is_empty())
                .ok_or(ConfigError::Missing("node-name", "NODE_NAME"))?,
            namespaces,
            admin_listen: merged.admin_listen.unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.parse().expect("valid default")),
            audience,
            token_review_cache_ttl: merged.token_review_cache_ttl.map_or(Duration::from_secs(10), |d| d.0),
            vault_addr: merged.vault_addr.ok_or(ConfigError::Missing("vault-addr", "VAULT_ADDR"))?,
            vault_cacert: merged.vault_cacert,
            vault_auth_mount: merged.vault_auth_mount.unwrap_or_else(|| "kubernetes".into()),
            vault_auth_role: merged
                .vault_auth_role
                .ok_or(ConfigError::Missing("vault-auth-role", "VAULTLET_VAULT_AUTH_ROLE"))?,
            vault_auth_jwt_file: merged.vault_auth_jwt_file.unwrap_or_else(|| DEFAULT_JWT_FILE.into()),
            transit_mount: merged.transit_mount.unwrap_or_else(|| "transit".into()),
            vault_timeout: merged.vault_timeout.map_or(Duration::from_secs(5), |d| d.0),
            peer_binding: merged.peer_binding.unwrap_or(PeerBinding::Enforce),
            proc_root: merged.proc_root.unwrap_or_else(|| "/proc".into()),
            audit_log: merged.audit_log.unwrap_or_else(|| "-".into()),
            policy_file: merged.policy_file,
            limits: Limits {
                connections: merged.max_connections.unwrap_or(defaults.connections),
                connections_per_peer: merged.max_connections_per_peer.unwrap_or(defaults.connections_per_peer),
                streams_per_peer: merged.max_streams_per_peer.unwrap_or(defaults.streams_per_peer),
            },
        })
    }
}

fn read_file(path: &Path) -> Result<ServeArgs, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
    if text.trim().is_empty() {
        return Ok(ServeArgs::default());
    }
    serde_saphyr::from_str(&text).map_err(|e| ConfigError::Parse(path.to_owned(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(f: impl FnOnce(&mut ServeArgs)) -> ServeArgs {
        let mut a = ServeArgs {
            vault_addr: Some("http://127.0.0.1:8200".into()),
            vault_auth_role: Some("agent".into()),
            node_name: Some("node-1".into()),
            ..Default::default()
        };
        f(&mut a);
        a
    }

    #[test]
    fn defaults_apply() {
        let c = args(|_| {}).resolve().unwrap();
        assert_eq!(c.audience, "vaultlet");
        assert_eq!(c.transit_mount, "transit");
        assert_eq!(c.vault_auth_mount, "kubernetes");
        assert_eq!(c.vault_timeout, Duration::from_secs(5));
        assert_eq!(c.token_review_cache_ttl, Duration::from_secs(10));
        assert!(c.namespaces.is_empty());
        assert_eq!(c.peer_binding, PeerBinding::Enforce);
        assert_eq!(c.audit_log, PathBuf::from("-"));
    }

    #[test]
    fn the_file_fills_what_flags_leave_unset() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "transit-mount: kv-transit\nvault-timeout: 2s\nnamespaces: [a, b]\naudience: from-file\npeer-binding: warn\n",
        )
        .unwrap();
        let c = args(|a| {
            a.config = Some(file.clone());
            a.audience = Some("from-flag".into());
        })
        .resolve()
        .unwrap();
        assert_eq!(c.transit_mount, "kv-transit");
        assert_eq!(c.vault_timeout, Duration::from_secs(2));
        assert_eq!(c.namespaces, ["a", "b"]);
        assert_eq!(c.audience, "from-flag");
        assert_eq!(c.peer_binding, PeerBinding::Warn);
    }

    #[test]
    fn mistakes_are_named() {
        let e = args(|a| a.vault_addr = None).resolve().unwrap_err().to_string();
        assert!(e.contains("vault-addr") && e.contains("VAULT_ADDR"), "{e}");
        let e = args(|a| a.node_name = None).resolve().unwrap_err().to_string();
        assert!(e.contains("node-name") && e.contains("NODE_NAME"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "vault-adr: typo\n").unwrap();
        let e = args(|a| a.config = Some(file.clone())).resolve().unwrap_err().to_string();
        assert!(e.contains("vault-adr"), "{e}");
        let e = args(|a| a.namespaces = Some(vec!["Bad_NS".into()])).resolve().unwrap_err().to_string();
        assert!(e.contains("Bad_NS"), "{e}");
        assert!("5 parsecs".parse::<HumanDuration>().is_err());
    }
}
