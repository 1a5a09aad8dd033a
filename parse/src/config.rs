//! The `vaultlet serve` settings: each a flag (with the `cli` feature), an
//! environment variable, or a key of the YAML config file named like the flag
//! (`vault-addr: https://...`). This module reads the file; the agent applies
//! the defaults and checks what is required.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// What to do when the token's pod is not the calling process's pod.
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerBinding {
    /// Refuse the call.
    Enforce,
    /// Log it and serve the call (for a first rollout).
    Warn,
    /// Do not look.
    Off,
}

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
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[derive(Deserialize, Default, Debug, Clone)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServeArgs {
    /// YAML file with any of these settings (keys are the flag names).
    #[cfg_attr(feature = "cli", arg(long, env = "VAULTLET_CONFIG", value_name = "FILE"))]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Unix socket to serve on [default: /run/vaultlet/vaultlet.sock].
    #[cfg_attr(feature = "cli", arg(long, env = "VAULTLET_SOCKET"))]
    pub socket: Option<PathBuf>,

    /// This node's name (from the downward API): callers' pods must run on it.
    #[cfg_attr(feature = "cli", arg(long, env = "NODE_NAME"))]
    pub node_name: Option<String>,

    /// Namespaces whose managed Secrets are served, comma-separated [default: all].
    #[cfg_attr(feature = "cli", arg(long, env = "VAULTLET_NAMESPACES", value_delimiter = ','))]
    pub namespaces: Option<Vec<String>>,

    /// HTTP address for /healthz, /readyz and /metrics [default: 0.0.0.0:9750].
    #[cfg_attr(feature = "cli", arg(long, env = "VAULTLET_ADMIN_LISTEN"))]
    pub admin_listen: Option<SocketAddr>,

    /// Audience callers' ServiceAccount tokens must carry [default: vaultlet].
    #[cfg_attr(feature = "cli", arg(long, env = "VAULTLET_AUDIENCE"))]
    pub audience: Option<String>,

    /// How long a TokenReview answer is reused, never past the token's expiry [default: 10s].
    #[cfg_attr(feature = "cli", arg(long, env = "VAULTLET_TOKEN_REVIEW_CACHE_TTL", value_name = "DURATION"))]
    pub token_review_cache_ttl: Option<HumanDuration>,

    /// Vault/OpenBao address.
    #[cfg_attr(feature = "cli", arg(long, env = "VAULT_ADDR"))]
    pub vault_addr: Option<String>,

    /// CA certificate (PEM) to verify Vault/OpenBao's TLS certificate.
    #[cfg_attr(feature = "cli", arg(long, env = "VAULT_CACERT"))]
    pub vault_cacert: Option<PathBuf>,

    /// Mount of Vault's Kubernetes auth method [default: kubernetes].
    #[cfg_attr(feature = "cli", arg(long, env = "VAULTLET_VAULT_AUTH_MOUNT"))]
    pub vault_auth_mount: Option<String>,

    /// Role of the Kubernetes auth method the agent logs in with.
    #[cfg_attr(feature = "cli", arg(long, env = "VAULTLET_VAULT_AUTH_ROLE"))]
    pub vault_auth_role: Option<String>,

    /// The agent's own ServiceAccount token for the Vault login
    /// [default: /var/run/secrets/kubernetes.io/serviceaccount/token].
    #[cfg_attr(feature = "cli", arg(long, env = "VAULTLET_VAULT_AUTH_JWT_FILE"))]
    pub vault_auth_jwt_file: Option<PathBuf>,

    /// Mount of the Transit secrets engine [default: transit].
    #[cfg_attr(feature = "cli", arg(long, env = "VAULTLET_TRANSIT_MOUNT"))]
    pub transit_mount: Option<String>,

    /// Deadline of every Vault/OpenBao call [default: 5s].
    #[cfg_attr(feature = "cli", arg(long, env = "VAULTLET_VAULT_TIMEOUT", value_name = "DURATION"))]
    pub vault_timeout: Option<HumanDuration>,

    /// Whether the token's pod must be the calling process's pod [default: enforce].
    #[cfg_attr(feature = "cli", arg(long, env = "VAULTLET_PEER_BINDING", value_enum))]
    pub peer_binding: Option<PeerBinding>,

    /// Where the node's processes are listed (the DaemonSet runs with hostPID) [default: /proc].
    #[cfg_attr(feature = "cli", arg(long, env = "VAULTLET_PROC_ROOT"))]
    pub proc_root: Option<PathBuf>,

    /// Audit log file (JSON lines, hash-chained); `-` for standard output [default: -].
    #[cfg_attr(feature = "cli", arg(long, env = "VAULTLET_AUDIT_LOG"))]
    pub audit_log: Option<PathBuf>,

    /// Agent-wide policy file of cross-namespace grants (YAML).
    #[cfg_attr(feature = "cli", arg(long, env = "VAULTLET_POLICY_FILE"))]
    pub policy_file: Option<PathBuf>,

    /// Connections the agent accepts in all [default: 4096].
    #[cfg_attr(feature = "cli", arg(long, env = "VAULTLET_MAX_CONNECTIONS"))]
    pub max_connections: Option<usize>,

    /// Connections one peer (a pod; outside pods, a user) may hold [default: 32].
    #[cfg_attr(feature = "cli", arg(long, env = "VAULTLET_MAX_CONNECTIONS_PER_PEER"))]
    pub max_connections_per_peer: Option<usize>,

    /// Watch streams one peer may hold open [default: 1024].
    #[cfg_attr(feature = "cli", arg(long, env = "VAULTLET_MAX_STREAMS_PER_PEER"))]
    pub max_streams_per_peer: Option<usize>,

    /// Calls of one peer waiting for an answer at once [default: 256].
    #[cfg_attr(feature = "cli", arg(long, env = "VAULTLET_MAX_PENDING_CALLS_PER_PEER"))]
    pub max_pending_calls_per_peer: Option<usize>,

    /// Calls per second one peer may make, after a burst of twice as many; 0: no
    /// limit [default: 2000].
    #[cfg_attr(feature = "cli", arg(long, env = "VAULTLET_MAX_CALLS_PER_SECOND_PER_PEER"))]
    pub max_calls_per_second_per_peer: Option<u32>,

    /// A decoded secret nobody has read or watched for this long is dropped
    /// from memory (zeroized); the next read decrypts it again [default: 10m].
    #[cfg_attr(feature = "cli", arg(long, env = "VAULTLET_CACHE_IDLE_TTL", value_name = "DURATION"))]
    pub cache_idle_ttl: Option<HumanDuration>,

    /// Flush each batch of audit records to disk (fdatasync) before the calls it
    /// covers answer; without it a record is written to the OS first, which
    /// survives the agent being killed but not the node losing power.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VAULTLET_AUDIT_FSYNC", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")
    )]
    pub audit_fsync: Option<bool>,

    /// Namespaces whose Secrets sealed before bindings (no vaultlet.io/binding
    /// annotation) are still served, each read audited as unbound: the window
    /// for `vaultlet recrypt --bind` [default: none].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VAULTLET_ALLOW_UNBOUND_NAMESPACES", value_delimiter = ',', value_name = "NAMESPACES")
    )]
    pub allow_unbound_namespaces: Option<Vec<String>>,

    /// Which Transit keys the Secrets of a namespace may name, as
    /// `NS=KEY[,KEY...]`, several separated by `;` (in the file: a map of
    /// namespace to keys); a namespace not listed may name any [default: any].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VAULTLET_TRANSIT_KEYS", value_delimiter = ';', value_name = "NS=KEYS")
    )]
    #[serde(default, deserialize_with = "namespace_keys_map")]
    pub transit_keys: Option<Vec<NamespaceKeys>>,
}

/// The Transit keys one namespace's Secrets may name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceKeys {
    pub namespace: String,
    pub keys: Vec<String>,
}

impl FromStr for NamespaceKeys {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (namespace, keys) = s.split_once('=').ok_or_else(|| format!("{s:?} is not NAMESPACE=KEY[,KEY...]"))?;
        let keys: Vec<String> = keys.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned).collect();
        if namespace.trim().is_empty() || keys.is_empty() {
            return Err(format!("{s:?} is not NAMESPACE=KEY[,KEY...]"));
        }
        Ok(NamespaceKeys { namespace: namespace.trim().to_owned(), keys })
    }
}

/// `transit-keys: {payments: [payments, shared]}` in the config file.
fn namespace_keys_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<NamespaceKeys>>, D::Error> {
    let map = Option::<std::collections::BTreeMap<String, Vec<String>>>::deserialize(d)?;
    Ok(map.map(|m| m.into_iter().map(|(namespace, keys)| NamespaceKeys { namespace, keys }).collect()))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("config file {0}: {1}")]
    Parse(PathBuf, String),
}

impl ServeArgs {
    /// Fills what the flags and environment left unset from `other` (the file).
    pub fn or(self, other: ServeArgs) -> ServeArgs {
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
            max_pending_calls_per_peer: self.max_pending_calls_per_peer.or(other.max_pending_calls_per_peer),
            max_calls_per_second_per_peer: self.max_calls_per_second_per_peer.or(other.max_calls_per_second_per_peer),
            cache_idle_ttl: self.cache_idle_ttl.or(other.cache_idle_ttl),
            audit_fsync: self.audit_fsync.or(other.audit_fsync),
            allow_unbound_namespaces: self.allow_unbound_namespaces.or(other.allow_unbound_namespaces),
            transit_keys: self.transit_keys.or(other.transit_keys),
        }
    }

    /// These settings, with what they leave unset filled from the file named
    /// by `config` (when there is one).
    pub fn with_file(self) -> Result<ServeArgs, ConfigFileError> {
        match self.config.clone() {
            Some(path) => Ok(self.or(read_file(&path)?)),
            None => Ok(self),
        }
    }

    /// Parses a config file's text (empty: no settings).
    pub fn from_yaml(text: &str) -> Result<ServeArgs, String> {
        if text.trim().is_empty() {
            return Ok(ServeArgs::default());
        }
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }
}

fn read_file(path: &Path) -> Result<ServeArgs, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigFileError::Read(path.to_owned(), e))?;
    ServeArgs::from_yaml(&text).map_err(|e| ConfigFileError::Parse(path.to_owned(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_fills_what_flags_leave_unset() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "transit-mount: kv-transit\nvault-timeout: 2s\nnamespaces: [a, b]\naudience: from-file\npeer-binding: warn\n")
            .unwrap();
        let args = ServeArgs { config: Some(file), audience: Some("from-flag".into()), ..Default::default() };
        let merged = args.with_file().unwrap();
        assert_eq!(merged.transit_mount.as_deref(), Some("kv-transit"));
        assert_eq!(merged.vault_timeout, Some(HumanDuration(Duration::from_secs(2))));
        assert_eq!(merged.namespaces.unwrap(), ["a", "b"]);
        assert_eq!(merged.audience.as_deref(), Some("from-flag"));
        assert_eq!(merged.peer_binding, Some(PeerBinding::Warn));
    }

    #[test]
    fn transit_keys_come_as_a_map_in_the_file_and_as_text_in_a_flag() {
        let a = ServeArgs::from_yaml("transit-keys:\n  payments: [payments, shared]\n  web: [web]\n").unwrap();
        let keys = a.transit_keys.unwrap();
        assert_eq!(
            keys[0],
            NamespaceKeys { namespace: "payments".into(), keys: vec!["payments".into(), "shared".into()] }
        );
        assert_eq!(keys.len(), 2);
        assert_eq!("web=a, b".parse::<NamespaceKeys>().unwrap().keys, ["a", "b"]);
        for bad in ["web", "=a", "web="] {
            assert!(bad.parse::<NamespaceKeys>().is_err(), "{bad}");
        }
        let a = ServeArgs::from_yaml("audit-fsync: true\ncache-idle-ttl: 1m\nallow-unbound-namespaces: [legacy]\n")
            .unwrap();
        assert_eq!((a.audit_fsync, a.allow_unbound_namespaces.unwrap()[0].as_str()), (Some(true), "legacy"));
    }

    #[test]
    fn mistakes_in_the_file_are_named() {
        let e = ServeArgs::from_yaml("vault-adr: typo\n").unwrap_err();
        assert!(e.contains("vault-adr"), "{e}");
        assert!(ServeArgs::from_yaml("peer-binding: sometimes\n").is_err());
        assert!("5 parsecs".parse::<HumanDuration>().is_err());
        assert!(ServeArgs::from_yaml("").is_ok());
    }
}
