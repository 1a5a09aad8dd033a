//! Production source: managed Kubernetes Secrets (ciphertext only).
//!
//! The agent watches their metadata only (a kube-rs metadata watcher, parsed
//! into no more than the catalog keeps: `meta`): that answers who may read
//! a Secret and tells when one changes. A Secret's data is fetched (`fetch`)
//! when a caller on this node first asks for it, and again when it changes
//! while someone on the node still uses it; nobody else's ciphertext is ever
//! downloaded, so a node's cost follows its pods, not the cluster.
//!
//! The watcher re-lists by itself after a 410 Gone or a dropped connection;
//! every Secret it sees change is announced, and the cache reloads the ones
//! somebody asked for.
//!
//! Each ciphertext is decrypted under the context of where its Secret is (see
//! `convention::place`); a Secret sealed before bindings existed is refused
//! outside the namespaces of the migration window.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use super::{Access, ChangeSender, Held, LoadFuture, Loaded, SecretSource, Unavailable};
use crate::metrics::Metrics;
use crate::secret::{DocumentVersion, SecretId, SecretVersion, Views};
use crate::transit::Transit;
use vaultlet_parse::document::Document;

mod catalog;
pub mod convention;
mod fetch;
mod meta;

use catalog::{Catalog, Readers};
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
    catalog: Arc<Catalog>,
    client: Client,
    config: KubeSourceConfig,
    /// Watches (one for the cluster, or one per namespace) yet to list once:
    /// before, an absent Secret may merely not be listed yet, so the source
    /// answers nothing.
    unlisted: Arc<AtomicUsize>,
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
        let catalog = Arc::new(Catalog::default());
        let unlisted = Arc::new(AtomicUsize::new(scopes.len()));
        for scope in scopes {
            // Metadata only: see `meta`.
            let api: Api<meta::CatalogMeta> = match &scope {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            let config = watcher::Config::default().labels(convention::MANAGED_SELECTOR);
            let events = watcher(api, config).default_backoff().map(|e| e.map(metadata_only));
            let (counted, once) = (unlisted.clone(), std::sync::Once::new());
            let listed = move || {
                once.call_once(|| {
                    if counted.fetch_sub(1, Ordering::AcqRel) == 1 {
                        tracing::info!("the watch of managed Secrets has listed them");
                    }
                })
            };
            tokio::spawn(catalog.clone().follow(events, scope, changes.clone(), listed));
        }
        KubeSource { catalog, client, config, unlisted, transit, metrics }
    }

    /// True once every watch has listed its Secrets.
    pub fn is_listed(&self) -> bool {
        self.unlisted.load(Ordering::Acquire) == 0
    }

    /// Decrypts and parses `secret` at `revision`. A data key whose ciphertext
    /// (and key, binding and format) is the one `previous` was decoded from
    /// keeps its document: an annotation edit costs no decrypt.
    async fn decode(
        &self,
        id: &SecretId,
        secret: &Secret,
        revision: String,
        previous: Option<&SecretVersion>,
    ) -> Result<Loaded, Unavailable> {
        let invalid = |message: String| Loaded::Invalid { revision: revision.clone(), message };
        let managed = match convention::read(secret) {
            Ok(m) => m,
            Err(e) => return Ok(invalid(e.to_string())),
        };
        if let Err(refusal) = self.may_decrypt(&id.namespace, &managed) {
            return Ok(invalid(refusal));
        }
        let sealed = managed.sealed(&id.namespace, &id.name);
        let mut documents = std::collections::BTreeMap::new();
        let mut to_decrypt = Vec::new();
        for ((key, ct), item) in managed.ciphertexts.iter().zip(sealed) {
            let source = fingerprint(&managed, key, ct);
            match previous.and_then(|p| p.documents.get(*key)).filter(|d| d.source == source) {
                Some(same) => {
                    documents.insert((*key).to_owned(), same.clone());
                }
                None => to_decrypt.push((*key, *ct, item, source)),
            }
        }
        if to_decrypt.is_empty() {
            return Ok(Loaded::Version(SecretVersion {
                revision,
                documents,
                unbound: managed.binding == Binding::Unbound,
                views: Views::default(),
            }));
        }
        let items: Vec<_> = to_decrypt.iter().map(|(_, _, item, _)| item.clone()).collect();
        let plaintexts = match self.transit.decrypt(managed.transit_key, &items).await {
            Ok(p) => p,
            Err(e) if e.is_transient() => return Err(Unavailable(e.to_string())),
            Err(e) => return Ok(invalid(format!("Transit key {:?}: {e}", managed.transit_key))),
        };
        for ((key, ct, _, source), plain) in to_decrypt.into_iter().zip(plaintexts) {
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
            let dv = DocumentVersion { doc: Arc::new(doc), key_version, format: managed.format, source };
            documents.insert(key.to_owned(), dv);
        }
        let unbound = managed.binding == Binding::Unbound;
        Ok(Loaded::Version(SecretVersion { revision, documents, unbound, views: Views::default() }))
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
    fn load<'a>(&'a self, id: &'a SecretId, held: Held<'a>) -> LoadFuture<'a> {
        async move {
            if !self.is_listed() {
                return Err(Unavailable("the agent is starting: its watch of Secrets has not listed them yet".into()));
            }
            if !self.catalog.contains(id) {
                return Ok(Loaded::Absent);
            }
            if held.revision.is_some_and(|r| self.catalog.is_at(id, r)) {
                return Ok(Loaded::Unchanged);
            }
            // The data as it is now: at the revision the watch announced, or newer.
            let announced = |revision: &str| self.catalog.is_at(id, revision);
            let Some(secret) = fetch::secret(&self.client, id, &self.metrics, announced).await? else {
                return Ok(Loaded::Absent);
            };
            let revision = secret.metadata.resource_version.clone().unwrap_or_default();
            if held.revision == Some(revision.as_str()) {
                return Ok(Loaded::Unchanged);
            }
            let loaded = self.decode(id, &secret, revision, held.version).await;
            if let Ok(Loaded::Invalid { .. }) = &loaded {
                self.metrics.undecodable_revisions.inc();
            }
            loaded
        }
        .boxed()
    }

    /// None until listed: `NotSynced` is no answer to keep.
    fn access_generation(&self) -> Option<u64> {
        self.is_listed().then(|| self.catalog.access_generation())
    }

    fn access(&self, id: &SecretId, service_account: &str) -> Access {
        if !self.is_listed() {
            return Access::NotSynced;
        }
        match self.catalog.readers(id) {
            Readers::Absent => Access::SecretAbsent,
            Readers::NotAnnotated => Access::NotAnnotated,
            Readers::Listed(list) => {
                if convention::listed_service_accounts(&list).any(|sa| sa == service_account) {
                    Access::Allowed
                } else {
                    Access::NotListed
                }
            }
        }
    }
}

/// What a document was decrypted from: the same fingerprint decrypts to the
/// same document (the place is the Secret's own, the same for every revision).
fn fingerprint(managed: &Managed<'_>, data_key: &str, ciphertext: &str) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    (managed.transit_key, managed.format.name(), managed.binding == Binding::V1, data_key, ciphertext).hash(&mut h);
    h.finish()
}

/// Keeps what the catalog reads of a watch event.
fn metadata_only(event: watcher::Event<meta::CatalogMeta>) -> watcher::Event<ObjectMeta> {
    use watcher::Event::*;
    match event {
        Apply(m) => Apply(m.metadata),
        InitApply(m) => InitApply(m.metadata),
        Delete(m) => Delete(m.metadata),
        Init => Init,
        InitDone => InitDone,
    }
}
