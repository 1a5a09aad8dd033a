//! `vaultlet serve`: the production agent (Kubernetes Secrets + Transit).

use std::sync::Arc;
use std::time::Duration;

use super::{CmdResult, shutdown_on_signal};
use crate::admin::{self, ReadinessCheck};
use crate::audit::AuditLog;
use crate::cache::Cache;
use crate::config::ServeArgs;
use crate::identity::pods::NodePods;
use crate::identity::review::Reviewer;
use crate::identity::{Authenticator, KubeAuth};
use crate::limits::{Admission, RateLimiter};
use crate::metrics::Metrics;
use crate::policy::{Grants, Policy};
use crate::server::{self, Parts, SecretsService};
use crate::source::change_channel;
use crate::source::kube::KubeSource;
use crate::transit::{Transit, VaultAuth, VaultSettings};

/// TokenReviews (cache misses) one pod may cause: a burst, then a steady rate.
const REVIEW_BURST: u32 = 20;
const REVIEW_PER_SECOND: u32 = 5;

/// How often readiness retries a Vault login while it fails (only then).
const VAULT_PROBE_EVERY: Duration = Duration::from_secs(5);

/// Run the agent: serve pods on this node the managed Secrets they may read,
/// decrypted through Vault/OpenBao Transit.
///
/// Callers present their projected ServiceAccount token (audience `vaultlet`);
/// each Secret lists the service accounts of its namespace that may read it in
/// the `vaultlet.io/allowed-service-accounts` annotation.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    settings: ServeArgs,
}

pub async fn run(args: Args) -> CmdResult {
    let config = crate::config::resolve(args.settings)?;
    crate::hygiene::check_socket_dir(&config.socket)?;
    crate::hygiene::harden();
    crate::hygiene::raise_open_files_limit();
    crate::hygiene::return_freed_memory();
    super::install_crypto_provider();
    // The watcher lives as long as the agent: dropping it stops the reloads.
    let (grants, _policy_watcher) = match &config.policy_file {
        Some(path) => {
            let (grants, watcher) = Grants::follow(path)?;
            (grants, Some(watcher))
        }
        None => (Grants::new(Vec::new()), None),
    };
    let metrics = Arc::new(Metrics::default());
    let audit = AuditLog::open(&config.audit_log, config.audit_fsync, metrics.audit_write_failures.clone())?;
    let shutdown = shutdown_on_signal()?;

    let kube = kube::Client::try_default()
        .await
        .map_err(|e| format!("Kubernetes client (KUBECONFIG or in-cluster configuration): {e}"))?;
    let transit = Transit::new(
        VaultSettings {
            addr: config.vault_addr.clone(),
            cacert: config.vault_cacert.clone(),
            timeout: config.vault_timeout,
        },
        VaultAuth::Kubernetes {
            mount: config.vault_auth_mount.clone(),
            role: config.vault_auth_role.clone(),
            jwt_file: config.vault_auth_jwt_file.clone(),
        },
        config.transit_mount.clone(),
        metrics.clone(),
    )?;

    let (changes_tx, changes_rx) = change_channel();
    let source =
        Arc::new(KubeSource::start(kube.clone(), config.secrets.clone(), transit.clone(), metrics.clone(), changes_tx));
    let cache = Cache::new(source.clone(), config.cache_idle_ttl, metrics.cached_secrets.clone());
    tokio::spawn(cache.clone().run_refresh(changes_rx));

    let pods = NodePods::start(kube.clone(), &config.node_name);
    let readiness = watch_readiness(source.clone(), transit.clone());
    let admin_listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .map_err(|e| format!("admin address {}: {e}", config.admin_listen))?;
    tokio::spawn(admin::serve(admin_listener, metrics.clone(), readiness, shutdown.clone()));

    let auth = Authenticator::Kubernetes(Box::new(KubeAuth {
        audience: config.audience.clone(),
        reviewer: Reviewer::new(kube, config.audience.clone(), config.token_review_cache_ttl, metrics.clone()),
        peer_binding: config.peer_binding,
        node: config.node_name.clone(),
        pods,
        limiter: RateLimiter::new(REVIEW_BURST, REVIEW_PER_SECOND),
    }));
    let policy = Policy::Kubernetes { source, grants };
    let service = SecretsService::new(Parts {
        cache,
        auth: Arc::new(auth),
        policy: Arc::new(policy),
        metrics,
        audit: Some(audit),
        admission: Admission::new(config.limits),
        shutdown: shutdown.clone(),
    });
    let listener = server::bind(&config.socket).await?;
    tracing::info!(
        socket = %config.socket.display(),
        admin = %config.admin_listen,
        vault = %config.vault_addr,
        node = %config.node_name,
        peer_binding = ?config.peer_binding,
        namespaces = %if config.secrets.namespaces.is_empty() { "*".to_owned() } else { config.secrets.namespaces.join(",") },
        "serving"
    );
    server::serve(listener, &config.socket, config.proc_root.clone(), service, shutdown).await?;
    tracing::info!("stopped; socket removed");
    Ok(())
}

/// Ready once the Secret watch has synced and a Vault login works. While Vault
/// is unreachable a login is retried every few seconds; once it answers, no
/// probe runs (steady state makes no Vault call).
fn watch_readiness(source: Arc<KubeSource>, transit: Arc<Transit>) -> ReadinessCheck {
    let probe = transit.clone();
    tokio::spawn(async move {
        loop {
            if probe.health().is_err()
                && let Err(e) = probe.check().await
            {
                tracing::warn!(error = %e, "Vault/OpenBao not reachable; retrying");
            }
            tokio::time::sleep(VAULT_PROBE_EVERY).await;
        }
    });
    Arc::new(move || {
        let mut waiting = Vec::new();
        if !source.is_listed() {
            waiting.push("the watch of managed Secrets has not listed them yet".to_owned());
        }
        if let Err(e) = transit.health() {
            waiting.push(format!("Vault/OpenBao at {}: {e}", transit.addr()));
        }
        waiting
    })
}
