//! Production source: managed Kubernetes Secrets (ciphertext only), kept by a
//! kube-rs reflector, decrypted through Transit when first asked for.
//!
//! The watcher re-lists by itself after a 410 Gone or a dropped connection;
//! every Secret it sees change is announced, and the cache reloads the ones
//! somebody asked for. Listing costs no decrypt: a Secret nobody reads is never
//! sent to Transit.

use std::collections::{BTreeSet, HashMap};
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

pub struct KubeSource {
    /// One store for the whole cluster, or one per watched namespace.
    stores: HashMap<Option<String>, Store<Secret>>,
    /// Set once every store has listed: before, an absent Secret may merely not
    /// be listed yet, so the source answers nothing.
    listed: Arc<AtomicBool>,
    transit: Arc<Transit>,
    metrics: Arc<Metrics>,
}

impl KubeSource {
    /// Starts watching managed Secrets (`namespaces` empty: all of them).
    pub fn start(
        client: Client,
        namespaces: &[String],
        transit: Arc<Transit>,
        metrics: Arc<Metrics>,
        changes: ChangeSender,
    ) -> KubeSource {
        let scopes: Vec<Option<String>> =
            if namespaces.is_empty() { vec![None] } else { namespaces.iter().cloned().map(Some).collect() };
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
        KubeSource { stores, listed, transit, metrics }
    }

    /// True once every watch has listed its Secrets.
    pub fn is_listed(&self) -> bool {
        self.listed.load(Ordering::Acquire)
    }

    fn secret(&self, id: &SecretId) -> Option<Arc<Secret>> {
        let store = self.stores.get(&None).or_else(|| self.stores.get(&Some(id.namespace.clone())))?;
        store.get(&ObjectRef::new(&id.name).within(&id.namespace))
    }

    async fn decode(&self, secret: &Secret, revision: String) -> Result<Loaded, Unavailable> {
        let invalid = |message: String| Loaded::Invalid { revision: revision.clone(), message };
        let managed = match convention::read(secret) {
            Ok(m) => m,
            Err(e) => return Ok(invalid(e.to_string())),
        };
        let ciphertexts: Vec<String> = managed.ciphertexts.values().map(|c| (*c).to_owned()).collect();
        let plaintexts = match self.transit.decrypt(managed.transit_key, &ciphertexts).await {
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
                        "{key}: Transit key {:?} cannot decrypt it: {reason}",
                        managed.transit_key
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
        Ok(Loaded::Version(SecretVersion { revision, documents }))
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
            let loaded = self.decode(&secret, revision).await;
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
