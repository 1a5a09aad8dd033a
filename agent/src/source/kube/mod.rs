//! Production source: managed Kubernetes Secrets (ciphertext only), kept by a
//! kube-rs reflector, decrypted through Transit when first asked for.
//!
//! The watcher re-lists by itself after a 410 Gone or a dropped connection;
//! every Secret it sees change is announced, and the cache reloads the ones
//! somebody asked for. Listing costs no decrypt: a Secret nobody reads is never
//! sent to Transit.
//!
//! Each ciphertext is decrypted under the context of where its Secret is (see
//! `convention::place`); a Secret sealed before bindings existed is refused
//! outside the namespaces of the migration window.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use super::{Access, ChangeSender, Loaded, SecretSource, Unavailable};
use crate::metrics::Metrics;
use crate::secret::{DocumentVersion, SecretId, SecretVersion};
use crate::transit::Transit;
use vaultlet_parse::document::Document;

pub mod convention;

use convention::{BINDING, BINDING_V1, Binding, Managed};

/// What the agent's configuration says about the Secrets it serves.
#[derive(Debug, Clone, Default)]
pub struct KubeSourceConfig {
    /// Namespaces whose Secrets are watched (empty: all).
    pub namespaces: Vec<String>,
    /// Namespaces whose unbound (legacy) Secrets are still served: the
    /// migration window of `vaultlet recrypt --bind`.
    pub allow_unbound_namespaces: HashSet<String>,
    /// Per namespace, the only Transit keys its Secrets may name (a namespace
    /// not listed may name any).
    pub transit_keys: HashMap<String, Vec<String>>,
}

pub struct KubeSource {
    /// One store for the whole cluster, or one per watched namespace.
    stores: HashMap<Option<String>, Store<Secret>>,
    config: KubeSourceConfig,
    /// Set once every store has listed: before, an absent Secret may merely not
    /// be listed yet, so the source answers nothing.
    listed: Arc<AtomicBool>,
    transit: Arc<Transit>,
    metrics: Arc<Metrics>,
}

impl KubeSource {
    /// Starts watching managed Secrets (of `config.namespaces`, or all).
    pub fn start(
        client: Client,
        config: KubeSourceConfig,
        transit: Arc<Transit>,
        metrics: Arc<Metrics>,
        changes: ChangeSender,
    ) -> KubeSource {
        let scopes: Vec<Option<String>> = if config.namespaces.is_empty() {
            vec![None]
        } else {
            config.namespaces.iter().cloned().map(Some).collect()
        };
        let mut stores = HashMap::new();
        for scope in scopes {
            let api: Api<Secret> = match &scope {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            let (store, writer) = reflector::store();
            let config = watcher::Config::default().labels(convention::MANAGED_SELECTOR);
            let events = reflector::reflector(writer, watcher(api, config).default_backoff());
            tokio::spawn(announce(events, store.clone(), scope.clone(), changes.clone()));
            stores.insert(scope, store);
        }
        let listed = Arc::new(AtomicBool::new(false));
        let (flag, waiting): (_, Vec<_>) = (listed.clone(), stores.values().cloned().collect());
        tokio::spawn(async move {
            for store in waiting {
                // Fails only when the writer is gone, i.e. at shutdown.
                let _ = store.wait_until_ready().await;
            }
            flag.store(true, Ordering::Release);
            tracing::info!("the watch of managed Secrets has listed them");
        });
        KubeSource { stores, config, listed, transit, metrics }
    }

    /// True once every watch has listed its Secrets.
    pub fn is_listed(&self) -> bool {
        self.listed.load(Ordering::Acquire)
    }

    fn secret(&self, id: &SecretId) -> Option<Arc<Secret>> {
        let store = self.stores.get(&None).or_else(|| self.stores.get(&Some(id.namespace.clone())))?;
        store.get(&ObjectRef::new(&id.name).within(&id.namespace))
    }

    async fn decode(&self, id: &SecretId, secret: &Secret, revision: String) -> Result<Loaded, Unavailable> {
        let invalid = |message: String| Loaded::Invalid { revision: revision.clone(), message };
        let managed = match convention::read(secret) {
            Ok(m) => m,
            Err(e) => return Ok(invalid(e.to_string())),
        };
        if let Err(refusal) = self.may_decrypt(&id.namespace, &managed) {
            return Ok(invalid(refusal));
        }
        let sealed = managed.sealed(&id.namespace, &id.name);
        let plaintexts = match self.transit.decrypt(managed.transit_key, &sealed).await {
            Ok(p) => p,
            Err(e) if e.is_transient() => return Err(Unavailable(e.to_string())),
            Err(e) => return Ok(invalid(format!("Transit key {:?}: {e}", managed.transit_key))),
        };
        let mut documents = std::collections::BTreeMap::new();
        for ((key, ct), plain) in managed.ciphertexts.iter().zip(plaintexts) {
            let plain = match plain {
                Ok(p) => p,
                Err(reason) => {
                    return Ok(invalid(format!(
                        "{key}: Transit key {:?} cannot decrypt it here: {reason}{}",
                        managed.transit_key,
                        match managed.binding {
                            // A bound ciphertext fails here when it was sealed for another place.
                            Binding::V1 => " (a ciphertext decrypts only in the Secret and data key it was sealed for)",
                            Binding::Unbound => "",
                        }
                    )));
                }
            };
            let doc = match Document::parse(managed.format, plain.to_vec()) {
                Ok(d) => d,
                Err(e) => return Ok(invalid(format!("{key}: {e}"))),
            };
            let key_version = crate::transit::key_version(ct).unwrap_or(0);
            documents
                .insert((*key).to_owned(), DocumentVersion { doc: Arc::new(doc), key_version, format: managed.format });
        }
        let unbound = managed.binding == Binding::Unbound;
        Ok(Loaded::Version(SecretVersion { revision, documents, unbound }))
    }

    /// The agent's own rules on a Secret before anything is sent to Transit:
    /// its binding, and the keys its namespace may name.
    fn may_decrypt(&self, namespace: &str, managed: &Managed<'_>) -> Result<(), String> {
        if managed.binding == Binding::Unbound && !self.config.allow_unbound_namespaces.contains(namespace) {
            return Err(format!(
                "its ciphertext is not bound to it (sealed before {BINDING}: {BINDING_V1}), so a copy would decrypt \
                 anywhere: move it to a derived key with `vaultlet recrypt --bind`, or list namespace {namespace} in \
                 --allow-unbound-namespaces for the migration"
            ));
        }
        if let Some(allowed) = self.config.transit_keys.get(namespace)
            && !allowed.iter().any(|k| k == managed.transit_key)
        {
            return Err(format!(
                "namespace {namespace} may not use Transit key {:?} (the agent's transit-keys setting allows: {})",
                managed.transit_key,
                allowed.join(", ")
            ));
        }
        Ok(())
    }
}

impl SecretSource for KubeSource {
    fn load<'a>(&'a self, id: &'a SecretId, known: Option<&'a str>) -> BoxFuture<'a, Result<Loaded, Unavailable>> {
        async move {
            if !self.listed.load(Ordering::Acquire) {
                return Err(Unavailable("the agent is starting: its watch of Secrets has not listed them yet".into()));
            }
            let Some(secret) = self.secret(id) else { return Ok(Loaded::Absent) };
            let revision = secret.metadata.resource_version.clone().unwrap_or_default();
            if known == Some(revision.as_str()) {
                return Ok(Loaded::Unchanged);
            }
            let loaded = self.decode(id, &secret, revision).await;
            if let Ok(Loaded::Invalid { .. }) = &loaded {
                self.metrics.undecodable_revisions.inc();
            }
            loaded
        }
        .boxed()
    }

    fn access(&self, id: &SecretId, service_account: &str) -> Access {
        if !self.listed.load(Ordering::Acquire) {
            return Access::NotSynced;
        }
        let Some(secret) = self.secret(id) else { return Access::SecretAbsent };
        match convention::allowed_service_accounts(&secret) {
            None => Access::NotAnnotated,
            Some(mut listed) => {
                if listed.any(|sa| sa == service_account) {
                    Access::Allowed
                } else {
                    Access::NotListed
                }
            }
        }
    }
}

/// Feeds the reflector and announces the Secrets each event touches. After a
/// re-list, every Secret known before or after is announced, so one deleted
/// while the watch was down is not missed (the cache ignores the unchanged).
async fn announce(
    events: impl futures::Stream<Item = Result<watcher::Event<Secret>, watcher::Error>> + Send + 'static,
    store: Store<Secret>,
    scope: Option<String>,
    changes: ChangeSender,
) {
    let id_of = |s: &Secret| {
        SecretId::new(s.metadata.namespace.clone().unwrap_or_default(), s.metadata.name.clone().unwrap_or_default())
    };
    let mut relisted = BTreeSet::new();
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let touched = match event {
            Ok(watcher::Event::Apply(s) | watcher::Event::Delete(s)) => vec![id_of(&s)],
            Ok(watcher::Event::Init) => {
                relisted = store.state().iter().map(|s| id_of(s)).collect();
                continue;
            }
            Ok(watcher::Event::InitApply(s)) => {
                relisted.insert(id_of(&s));
                continue;
            }
            Ok(watcher::Event::InitDone) => std::mem::take(&mut relisted).into_iter().collect(),
            Err(e) => {
                tracing::warn!(namespace = scope.as_deref().unwrap_or("*"), error = %e, "Secret watch failed; retrying");
                continue;
            }
        };
        for id in touched {
            if changes.send(id).is_err() {
                return;
            }
        }
    }
}
