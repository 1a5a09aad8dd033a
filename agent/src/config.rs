//! `vaultlet serve` configuration: flags, their environment variables, and an
//! optional YAML file (keys are the flag names: `vault-addr: https://...`).
//! Precedence: flag, then environment, then file, then default.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use vaultlet_parse::config::{ConfigFileError, HumanDuration, PeerBinding, ServeArgs};

use crate::limits::Limits;
use crate::source::kube::KubeSourceConfig;
use crate::source::kube::convention::is_key_name;

pub const DEFAULT_AUDIENCE: &str = "vaultlet";
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9750";
pub const DEFAULT_JWT_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const DEFAULT_CACHE_IDLE_TTL: Duration = Duration::from_secs(600);

/// The settings `serve` runs with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub socket: PathBuf,
    pub node_name: String,
    /// Which Secrets are served, and the agent's own rules on them.
    pub secrets: KubeSourceConfig,
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
    pub audit_fsync: bool,
    pub policy_file: Option<PathBuf>,
    pub limits: Limits,
    pub cache_idle_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    File(#[from] ConfigFileError),
    #[error("{0} is required: pass --{0} (or set {1})")]
    Missing(&'static str, &'static str),
    #[error("--{0}: {1}")]
    Invalid(&'static str, String),
}

/// Merges the config file in, applies defaults, checks what is required.
pub fn resolve(args: ServeArgs) -> Result<ServeConfig, ConfigError> {
    let merged = args.with_file()?;
    let namespaces = namespace_list("namespaces", merged.namespaces)?;
    let allow_unbound_namespaces = namespace_list("allow-unbound-namespaces", merged.allow_unbound_namespaces)?;
    let mut transit_keys = HashMap::new();
    for entry in merged.transit_keys.unwrap_or_default() {
        namespace_list("transit-keys", Some(vec![entry.namespace.clone()]))?;
        if let Some(bad) = entry.keys.iter().find(|k| !is_key_name(k)) {
            return Err(ConfigError::Invalid("transit-keys", format!("{bad:?} is not a Transit key name")));
        }
        transit_keys.insert(entry.namespace, entry.keys);
    }
    let audience = merged.audience.unwrap_or_else(|| DEFAULT_AUDIENCE.into());
    let defaults = Limits::default();
    let calls_per_second = merged.max_calls_per_second_per_peer.unwrap_or(defaults.calls_per_second_per_peer);
    if audience.is_empty() {
        return Err(ConfigError::Invalid("audience", "must not be empty".into()));
    }
    Ok(ServeConfig {
        socket: merged.socket.unwrap_or_else(|| vaultlet_client::DEFAULT_SOCKET.into()),
        node_name: merged.node_name.filter(|n| !n.is_empty()).ok_or(ConfigError::Missing("node-name", "NODE_NAME"))?,
        secrets: KubeSourceConfig {
            namespaces,
            allow_unbound_namespaces: allow_unbound_namespaces.into_iter().collect::<HashSet<_>>(),
            transit_keys,
        },
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
        audit_fsync: merged.audit_fsync.unwrap_or(false),
        policy_file: merged.policy_file,
        limits: Limits {
            connections: merged.max_connections.unwrap_or(defaults.connections),
            connections_per_peer: merged.max_connections_per_peer.unwrap_or(defaults.connections_per_peer),
            streams_per_peer: merged.max_streams_per_peer.unwrap_or(defaults.streams_per_peer),
            pending_per_peer: merged.max_pending_calls_per_peer.unwrap_or(defaults.pending_per_peer),
            calls_per_second_per_peer: calls_per_second,
            call_burst_per_peer: calls_per_second.saturating_mul(2),
        },
        cache_idle_ttl: merged.cache_idle_ttl.map_or(DEFAULT_CACHE_IDLE_TTL, |d| d.0),
    })
}

/// A list of namespace names, trimmed, each checked.
fn namespace_list(flag: &'static str, names: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let names: Vec<String> =
        names.unwrap_or_default().into_iter().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect();
    if let Some(bad) = names.iter().find(|n| !vaultlet_client::reference::is_dns_label(n)) {
        return Err(ConfigError::Invalid(flag, format!("{bad:?} is not a namespace name")));
    }
    Ok(names)
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
        let c = resolve(args(|_| {})).unwrap();
        assert_eq!(c.audience, "vaultlet");
        assert_eq!(c.transit_mount, "transit");
        assert_eq!(c.vault_auth_mount, "kubernetes");
        assert_eq!(c.vault_timeout, Duration::from_secs(5));
        assert_eq!(c.token_review_cache_ttl, Duration::from_secs(10));
        assert!(c.secrets.namespaces.is_empty() && c.secrets.allow_unbound_namespaces.is_empty());
        assert!(c.secrets.transit_keys.is_empty());
        assert_eq!(c.cache_idle_ttl, Duration::from_secs(600));
        assert!(!c.audit_fsync);
        assert_eq!(c.peer_binding, PeerBinding::Enforce);
        assert_eq!(c.audit_log, PathBuf::from("-"));
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn mistakes_are_named() {
        let e = resolve(args(|a| a.vault_addr = None)).unwrap_err().to_string();
        assert!(e.contains("vault-addr") && e.contains("VAULT_ADDR"), "{e}");
        let e = resolve(args(|a| a.node_name = None)).unwrap_err().to_string();
        assert!(e.contains("node-name") && e.contains("NODE_NAME"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "vault-adr: typo\n").unwrap();
        let e = resolve(args(|a| a.config = Some(file.clone()))).unwrap_err().to_string();
        assert!(e.contains("vault-adr") && e.contains("c.yaml"), "{e}");
        let e = resolve(args(|a| a.namespaces = Some(vec!["Bad_NS".into()]))).unwrap_err().to_string();
        assert!(e.contains("Bad_NS"), "{e}");
        let e = resolve(args(|a| a.allow_unbound_namespaces = Some(vec!["Bad_NS".into()]))).unwrap_err().to_string();
        assert!(e.contains("allow-unbound-namespaces") && e.contains("Bad_NS"), "{e}");
        let e = resolve(args(|a| a.transit_keys = Some(vec!["web=../x".parse().unwrap()]))).unwrap_err().to_string();
        assert!(e.contains("transit-keys") && e.contains("../x"), "{e}");
    }
}
