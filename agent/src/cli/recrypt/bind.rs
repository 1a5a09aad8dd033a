//! `vaultlet recrypt --bind`: the one-time migration of Secrets sealed before
//! bindings to a derived key, each ciphertext bound to its Secret and data key.
//!
//! Transit rewraps only within one key, and the old key is not derived, so the
//! plaintext passes through this process once (zeroized after use). Each Secret
//! is written back with its resourceVersion; a Secret already bound is skipped,
//! so a rerun after a crash finishes what is left.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;

use super::{Args, WRITE_ATTEMPTS, name_of};
use crate::cli::CmdResult;
use crate::cli::vault::ensure_derived_key;
use crate::source::kube::convention::{self, BINDING, BINDING_V1, Binding, TRANSIT_KEY};
use crate::transit::Transit;

#[derive(Default)]
struct Tally {
    bound: usize,
    already: usize,
    failed: usize,
}

pub async fn run(args: &Args, transit: &Arc<Transit>, kube: &kube::Client, secrets: Vec<Secret>) -> CmdResult {
    let mut tally = Tally::default();
    let mut ready_keys = BTreeSet::new();
    for secret in secrets {
        let name = name_of(&secret);
        let target = match target_key(args, &secret) {
            Ok(Some(key)) => key,
            Ok(None) => {
                tally.already += 1;
                continue;
            }
            Err(e) => {
                println!("{name}: FAILED: {e}");
                tally.failed += 1;
                continue;
            }
        };
        if !args.dry_run && !ready_keys.contains(&target) {
            if let Err(e) = ensure_derived_key(transit, &target).await {
                println!("key {target}: FAILED: {e}");
                tally.failed += 1;
                continue;
            }
            ready_keys.insert(target.clone());
        }
        match bind_secret(args, transit, kube, &target, secret).await {
            Ok(Outcome::Bound { from, keys }) => {
                let verb = if args.dry_run { "would bind" } else { "bound" };
                println!("{name}: {verb} {keys} data key(s) to derived key {target} (was {from}, unbound)");
                tally.bound += 1;
            }
            Ok(Outcome::AlreadyBound) => tally.already += 1,
            Err(e) => {
                println!("{name}: FAILED: {e}");
                tally.failed += 1;
            }
        }
    }
    println!(
        "recrypt --bind: {} secret(s) {}, {} already bound, {} failed",
        tally.bound,
        if args.dry_run { "to bind" } else { "bound" },
        tally.already,
        tally.failed
    );
    if !ready_keys.is_empty() {
        let keys: Vec<&str> = ready_keys.iter().map(String::as_str).collect();
        println!(
            "note: the agent now decrypts with {}: add them to TRANSIT_KEYS and rerun deploy/openbao/setup.sh",
            keys.join(", ")
        );
    }
    if tally.failed > 0 {
        return Err(format!("{} secret(s) or key(s) failed; see above", tally.failed).into());
    }
    Ok(())
}

enum Outcome {
    Bound { from: String, keys: usize },
    AlreadyBound,
}

/// The derived key an unbound Secret moves to; `None` when it is bound already.
fn target_key(args: &Args, secret: &Secret) -> Result<Option<String>, String> {
    let managed = convention::read(secret).map_err(|e| e.to_string())?;
    if managed.binding == Binding::V1 {
        return Ok(None);
    }
    let key = args.bind_key.clone().unwrap_or_else(|| format!("{}-bound", managed.transit_key));
    if !convention::is_key_name(&key) || key == managed.transit_key {
        return Err(format!("--bind-key {key:?} must be a Transit key name other than the Secret's own key"));
    }
    Ok(Some(key))
}

/// Decrypts one Secret's legacy ciphertexts, seals each for its place under
/// `target`, and writes the Secret back; on a conflict, starts again from the
/// Secret as it is now.
async fn bind_secret(
    args: &Args,
    transit: &Arc<Transit>,
    kube: &kube::Client,
    target: &str,
    mut secret: Secret,
) -> Result<Outcome, String> {
    let (namespace, name) =
        (secret.metadata.namespace.clone().unwrap_or_default(), secret.metadata.name.clone().unwrap_or_default());
    let api: Api<Secret> = Api::namespaced(kube.clone(), &namespace);
    for _ in 0..WRITE_ATTEMPTS {
        let managed = convention::read(&secret).map_err(|e| e.to_string())?;
        if managed.binding == Binding::V1 {
            return Ok(Outcome::AlreadyBound);
        }
        let from = managed.transit_key.to_owned();
        if args.dry_run {
            return Ok(Outcome::Bound { from, keys: managed.ciphertexts.len() });
        }
        let plaintexts = transit
            .decrypt(&from, &managed.sealed(&namespace, &name))
            .await
            .map_err(|e| format!("decrypting with {from}: {e}"))?;
        let mut data = BTreeMap::new();
        for (data_key, plain) in managed.ciphertexts.keys().zip(plaintexts) {
            let plain =
                plain.map_err(|reason| format!("data key {data_key}: Transit refused to decrypt it: {reason}"))?;
            let place = convention::place(&namespace, &name, data_key);
            let ct = transit.encrypt(target, &plain, Some(&place)).await.map_err(|e| e.to_string())?;
            data.insert((*data_key).to_owned(), ByteString(ct.into_bytes()));
        }
        let keys = data.len();
        secret.data = Some(data);
        let annotations = secret.metadata.annotations.get_or_insert_with(BTreeMap::new);
        annotations.insert(TRANSIT_KEY.into(), target.to_owned());
        annotations.insert(BINDING.into(), BINDING_V1.into());
        match api.replace(&name, &PostParams::default(), &secret).await {
            Ok(_) => return Ok(Outcome::Bound { from, keys }),
            Err(kube::Error::Api(s)) if s.is_conflict() => {
                secret = api
                    .get(&name)
                    .await
                    .map_err(|e| format!("re-reading after a conflict: {}", crate::cli::kube_error(&e)))?;
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => return Err("deleted while binding".into()),
            Err(e) => return Err(format!("writing it back: {}", crate::cli::kube_error(&e))),
        }
    }
    Err(format!("it kept changing under us ({WRITE_ATTEMPTS} attempts); rerun"))
}
