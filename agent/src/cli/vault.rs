//! How the command-line tools (`seal`, `recrypt`) reach Vault/OpenBao.

use std::path::PathBuf;
use std::sync::Arc;

use secrecy::SecretString;

use crate::config::{DEFAULT_JWT_FILE, HumanDuration};
use crate::transit::{Transit, VaultAuth, VaultSettings};

#[derive(clap::Args)]
pub struct VaultArgs {
    /// Vault/OpenBao address.
    #[arg(long, env = "VAULT_ADDR")]
    vault_addr: String,

    /// CA certificate (PEM) to verify Vault/OpenBao's TLS certificate.
    #[arg(long, env = "VAULT_CACERT")]
    vault_cacert: Option<PathBuf>,

    /// Log in with the Kubernetes auth method and this role (as a CronJob does);
    /// without it, the token in VAULT_TOKEN is used.
    #[arg(long, env = "VAULTLET_VAULT_AUTH_ROLE")]
    vault_auth_role: Option<String>,

    /// Mount of the Kubernetes auth method.
    #[arg(long, env = "VAULTLET_VAULT_AUTH_MOUNT", default_value = "kubernetes")]
    vault_auth_mount: String,

    /// ServiceAccount token for the Kubernetes auth login.
    #[arg(long, env = "VAULTLET_VAULT_AUTH_JWT_FILE", default_value = DEFAULT_JWT_FILE)]
    vault_auth_jwt_file: PathBuf,

    /// Mount of the Transit secrets engine.
    #[arg(long, env = "VAULTLET_TRANSIT_MOUNT", default_value = "transit")]
    transit_mount: String,

    /// Deadline of every Vault/OpenBao call.
    #[arg(long, env = "VAULTLET_VAULT_TIMEOUT", default_value = "10s")]
    vault_timeout: HumanDuration,
}

impl VaultArgs {
    pub fn transit(&self) -> Result<Arc<Transit>, Box<dyn std::error::Error>> {
        let auth = match (&self.vault_auth_role, std::env::var("VAULT_TOKEN")) {
            (Some(role), _) => VaultAuth::Kubernetes {
                mount: self.vault_auth_mount.clone(),
                role: role.clone(),
                jwt_file: self.vault_auth_jwt_file.clone(),
            },
            (None, Ok(token)) if !token.trim().is_empty() => VaultAuth::Token(SecretString::from(token.trim())),
            _ => return Err("no Vault credential: set VAULT_TOKEN, or pass --vault-auth-role to log in with the Kubernetes auth method".into()),
        };
        let settings = VaultSettings {
            addr: self.vault_addr.clone(),
            cacert: self.vault_cacert.clone(),
            timeout: self.vault_timeout.0,
        };
        Ok(Transit::new(settings, auth, self.transit_mount.clone(), Default::default())?)
    }
}

/// Creates `key` as a derived key when it does not exist; refuses a key that
/// is not derived (it would bind nothing).
pub async fn ensure_derived_key(transit: &Transit, key: &str) -> Result<(), Box<dyn std::error::Error>> {
    match transit.key_info_opt(key).await? {
        Some(info) if info.derived => Ok(()),
        Some(_) => Err(format!(
            "Transit key {key:?} exists and is not derived, so it cannot bind a ciphertext to its Secret; name a new \
             key (it is created derived), and move the Secrets sealed under {key:?} with `vaultlet recrypt --bind`"
        )
        .into()),
        None => {
            transit.create_derived_key(key).await?;
            println!("created Transit key {key} (derived)");
            Ok(())
        }
    }
}
