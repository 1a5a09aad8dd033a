//! `vaultlet recrypt`: rotate each Transit key used by managed Secrets once,
//! then re-encrypt every ciphertext under it with `rewrap` (plaintext never
//! leaves Vault) and write the Secrets back with optimistic concurrency.
//! `--bind` is the one-time migration of legacy Secrets to bound ciphertext
//! (`bind.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ListParams, PostParams};

use super::CmdResult;
use super::vault::VaultArgs;
use crate::source::kube::convention::{self, Binding};
use crate::transit::{Sealed, Transit, key_version};

mod bind;

/// Attempts at writing one Secret when someone else changes it meanwhile.
const WRITE_ATTEMPTS: usize = 5;

/// Rotate the Transit keys of managed Secrets and re-encrypt them (the seeds'
/// recryptonator, without plaintext ever leaving Vault).
///
/// Each key used by the Secrets in scope is rotated once; every ciphertext not
/// on the newest version is rewrapped; each Secret is written back with its
/// resourceVersion (a conflict is retried). Safe to rerun after a crash: a
/// rerun rotates again and brings everything to the newest version. Prints a
/// line per Secret and a summary; exits non-zero if any Secret failed.
///
/// With --bind, nothing is rotated: Secrets sealed before bindings (no
/// `vaultlet.io/binding` annotation, a key that is not derived) move to a
/// derived key, each ciphertext bound to its Secret and data key. Transit cannot
/// rewrap from one key to another, so for this migration only the plaintext
/// passes through this job, in memory, once; run it as an operator whose Vault
/// token may decrypt with the old keys and create and encrypt with the new ones.
/// Idempotent and resumable: bound Secrets are skipped, a rerun finishes the rest.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    vault: VaultArgs,

    /// Only this namespace [default: the kubeconfig's namespace].
    #[arg(long, short = 'n', conflicts_with = "all_namespaces")]
    namespace: Option<String>,

    /// Every namespace.
    #[arg(long, short = 'A')]
    all_namespaces: bool,

    /// Change nothing: say which keys would rotate and which Secrets would be rewrapped.
    #[arg(long)]
    dry_run: bool,

    /// After every ciphertext under a key is on its newest version, raise the
    /// key's min_decryption_version to it (older versions can no longer decrypt).
    /// Needs --all-namespaces, so that no Secret under the key is overlooked; assumes
    /// no ciphertext of the key lives outside managed Secrets.
    #[arg(long, requires = "all_namespaces", conflicts_with = "bind")]
    trim: bool,

    /// Move legacy (unbound) Secrets to a derived key instead of rotating (see above).
    #[arg(long)]
    bind: bool,

    /// With --bind: the derived key to move them to [default: OLD-bound for each
    /// old key OLD]; created when missing.
    #[arg(long, requires = "bind", value_name = "KEY")]
    bind_key: Option<String>,
}

#[derive(Default)]
struct Tally {
    rotated: usize,
    rewrapped: usize,
    unchanged: usize,
    failed: usize,
}

pub async fn run(args: Args) -> CmdResult {
    super::install_crypto_provider();
    let kube =
        kube::Client::try_default().await.map_err(|e| format!("Kubernetes client: {}", super::kube_error(&e)))?;
    let api: Api<Secret> = match (&args.namespace, args.all_namespaces) {
        (_, true) => Api::all(kube.clone()),
        (Some(ns), false) => Api::namespaced(kube.clone(), ns),
        (None, false) => Api::default_namespaced(kube.clone()),
    };
    let transit = args.vault.transit()?;
    let listed = api
        .list(&ListParams::default().labels(convention::MANAGED_SELECTOR))
        .await
        .map_err(|e| format!("listing managed Secrets: {}", super::kube_error(&e)))?;
    if args.bind {
        return bind::run(&args, &transit, &kube, listed.items).await;
    }

    let mut tally = Tally::default();
    let mut by_key: BTreeMap<String, Vec<Secret>> = BTreeMap::new();
    for secret in listed.items {
        match convention::read(&secret) {
            Ok(m) => by_key.entry(m.transit_key.to_owned()).or_default().push(secret),
            Err(e) => {
                println!("{}: FAILED: {e}", name_of(&secret));
                tally.failed += 1;
            }
        }
    }
    if by_key.is_empty() {
        println!("no managed Secrets in scope");
    }
    for (key, secrets) in by_key {
        recrypt_key(&args, &transit, &kube, &key, secrets, &mut tally).await;
    }
    let verb = if args.dry_run { "would rotate" } else { "rotated" };
    println!(
        "recrypt: {} key(s) {verb}, {} secret(s) {}, {} unchanged, {} failed",
        tally.rotated,
        tally.rewrapped,
        if args.dry_run { "to rewrap" } else { "rewrapped" },
        tally.unchanged,
        tally.failed
    );
    if tally.failed > 0 {
        return Err(format!("{} secret(s) or key(s) failed; see above", tally.failed).into());
    }
    Ok(())
}

async fn recrypt_key(
    args: &Args,
    transit: &Arc<Transit>,
    kube: &kube::Client,
    key: &str,
    secrets: Vec<Secret>,
    tally: &mut Tally,
) {
    let info = async {
        if !args.dry_run {
            transit.rotate(key).await?;
        }
        transit.key_info(key).await
    };
    let latest = match info.await {
        Ok(info) if args.dry_run => {
            println!("key {key}: at v{} (would rotate to v{})", info.latest_version, info.latest_version + 1);
            info.latest_version + 1
        }
        Ok(info) => {
            println!("key {key}: rotated to v{}", info.latest_version);
            info.latest_version
        }
        Err(e) => {
            println!("key {key}: FAILED: {e}");
            tally.failed += secrets.len();
            return;
        }
    };
    tally.rotated += 1;
    let mut all_current = true;
    for secret in secrets {
        let name = name_of(&secret);
        match recrypt_secret(args, transit, kube, key, latest, secret).await {
            Ok(0) => {
                println!("{name}: unchanged (already v{latest})");
                tally.unchanged += 1;
            }
            Ok(n) if args.dry_run => {
                println!("{name}: would rewrap {n} data key(s) to v{latest}");
                tally.rewrapped += 1;
            }
            Ok(n) => {
                println!("{name}: rewrapped {n} data key(s) to v{latest}");
                tally.rewrapped += 1;
            }
            Err(e) => {
                println!("{name}: FAILED: {e}");
                tally.failed += 1;
                all_current = false;
            }
        }
    }
    if args.trim && !args.dry_run {
        trim(transit, key, latest, all_current, tally).await;
    }
}

/// Rewraps the data keys of one Secret that are behind `latest` and writes it
/// back; on a conflict, reads it again and redoes what is still needed.
async fn recrypt_secret(
    args: &Args,
    transit: &Transit,
    kube: &kube::Client,
    key: &str,
    latest: u32,
    mut secret: Secret,
) -> Result<usize, String> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(kube.clone(), secret.metadata.namespace.as_deref().unwrap_or_default());
    for _ in 0..WRITE_ATTEMPTS {
        let stale: BTreeMap<String, String> = secret
            .data
            .iter()
            .flatten()
            .filter_map(|(k, v)| {
                let ct = std::str::from_utf8(&v.0).ok()?;
                (key_version(ct)? < latest).then(|| (k.clone(), ct.to_owned()))
            })
            .collect();
        if stale.is_empty() || args.dry_run {
            return Ok(stale.len());
        }
        if convention::annotation(&secret.metadata, convention::TRANSIT_KEY) != Some(key) {
            return Err("its transit key changed while recrypting; rerun".into());
        }
        let binding = convention::binding(&secret.metadata).map_err(|e| e.to_string())?;
        let namespace = secret.metadata.namespace.clone().unwrap_or_default();
        let items: Vec<Sealed> = stale
            .iter()
            .map(|(data_key, ct)| match binding {
                // Rewrapped under the same context: it stays bound to its place.
                Binding::V1 => Sealed::bound(ct.clone(), convention::place(&namespace, &name, data_key)),
                Binding::Unbound => Sealed::unbound(ct.clone()),
            })
            .collect();
        let rewrapped = transit.rewrap(key, &items).await.map_err(|e| e.to_string())?;
        let data = secret.data.get_or_insert_with(BTreeMap::new);
        for (data_key, result) in stale.keys().zip(rewrapped) {
            let ct = result.map_err(|reason| format!("data key {data_key}: Transit refused to rewrap it: {reason}"))?;
            data.insert(data_key.clone(), ByteString(ct.into_bytes()));
        }
        match api.replace(&name, &PostParams::default(), &secret).await {
            Ok(_) => return Ok(stale.len()),
            Err(kube::Error::Api(s)) if s.is_conflict() => {
                secret = api
                    .get(&name)
                    .await
                    .map_err(|e| format!("re-reading after a conflict: {}", super::kube_error(&e)))?;
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => return Err("deleted while recrypting".into()),
            Err(e) => return Err(format!("writing it back: {}", super::kube_error(&e))),
        }
    }
    Err(format!("it kept changing under us ({WRITE_ATTEMPTS} attempts); rerun"))
}

/// Raises the key's min_decryption_version once every Secret under it is current.
async fn trim(transit: &Transit, key: &str, latest: u32, all_current: bool, tally: &mut Tally) {
    if !all_current {
        println!("key {key}: not trimmed: some Secrets under it are not on v{latest}");
        return;
    }
    match transit.key_info(key).await {
        Ok(info) if info.min_decryption_version >= latest => {
            println!("key {key}: min_decryption_version already v{}", info.min_decryption_version)
        }
        Ok(info) => match transit.set_min_decryption_version(key, latest).await {
            Ok(()) => println!("key {key}: min_decryption_version v{} -> v{latest}", info.min_decryption_version),
            Err(e) => {
                println!("key {key}: trim FAILED: {e}");
                tally.failed += 1;
            }
        },
        Err(e) => {
            println!("key {key}: trim FAILED: {e}");
            tally.failed += 1;
        }
    }
}

pub(super) fn name_of(s: &Secret) -> String {
    format!("{}/{}", s.metadata.namespace.as_deref().unwrap_or(""), s.metadata.name.as_deref().unwrap_or(""))
}
