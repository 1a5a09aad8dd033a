//! What the agent knows of every managed Secret without its data: that it
//! exists, which revision it is at, and who may read it. Kept small on
//! purpose: a node holds one entry per managed Secret of the cluster (tens of
//! thousands), so an entry is a fixed-size slot pointing into its namespace's
//! string of names (`secrets`), with a hash of the resourceVersion and a
//! handle on a shared copy of the allowed-service-accounts annotation
//! (`annotations`): about 35 bytes and its name.
//!
//! It follows the metadata watch (`follow`): every Secret whose revision
//! changes, or that appears or goes, is announced. A re-list (after a 410 or a
//! dropped watch) marks what it sees; what it did not see went while the watch
//! was away, and is announced gone.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher;

use super::convention::ALLOWED_SERVICE_ACCOUNTS;
use crate::secret::SecretId;
use crate::source::{Change, ChangeSender};

mod annotations;
mod secrets;

use annotations::Annotations;
use secrets::{Known, Secrets};

/// What the catalog says of one Secret's readers.
pub enum Readers {
    Absent,
    /// No annotation: nobody.
    NotAnnotated,
    Listed(Arc<str>),
}

#[derive(Default)]
pub struct Catalog {
    inner: RwLock<Inner>,
    generations: AtomicU32,
    /// Bumped whenever who may read a Secret may have changed: one appeared or
    /// went, or its annotation changed (see `access_generation`).
    access_changes: AtomicU64,
}

#[derive(Default)]
struct Inner {
    namespaces: HashMap<Box<str>, Secrets>,
    annotations: Annotations,
}

pub fn revision_hash(resource_version: &str) -> u64 {
    let mut h = DefaultHasher::new();
    resource_version.hash(&mut h);
    h.finish()
}

impl Catalog {
    fn known(inner: &Inner, id: &SecretId) -> Option<Known> {
        inner.namespaces.get(id.namespace.as_str()).and_then(|n| n.get(&id.name))
    }

    pub fn readers(&self, id: &SecretId) -> Readers {
        let inner = self.inner.read().expect("catalog lock");
        match Self::known(&inner, id) {
            None => Readers::Absent,
            Some(k) => match inner.annotations.get(k.allowed) {
                None => Readers::NotAnnotated,
                Some(list) => Readers::Listed(list.clone()),
            },
        }
    }

    /// Changes whenever an answer of `readers` may have: an open watch asks
    /// `readers` again only then (see `policy::AccessStamp`). Bumped under the
    /// write lock, so a reader that sees the new number sees the new entry.
    pub fn access_generation(&self) -> u64 {
        self.access_changes.load(Ordering::Acquire)
    }

    fn access_changed(&self) {
        self.access_changes.fetch_add(1, Ordering::Release);
    }

    /// True when the Secret is known at `resource_version`.
    pub fn is_at(&self, id: &SecretId, resource_version: &str) -> bool {
        let inner = self.inner.read().expect("catalog lock");
        Self::known(&inner, id).is_some_and(|k| k.revision == revision_hash(resource_version))
    }

    pub fn contains(&self, id: &SecretId) -> bool {
        Self::known(&self.inner.read().expect("catalog lock"), id).is_some()
    }

    /// Records a Secret as `meta` says; the change, if that is news (new, or
    /// another revision).
    fn apply(&self, meta: &ObjectMeta, generation: u32) -> Option<Change> {
        let (Some(ns), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else { return None };
        let revision = revision_hash(meta.resource_version.as_deref().unwrap_or_default());
        let annotation = meta.annotations.as_ref().and_then(|a| a.get(ALLOWED_SERVICE_ACCOUNTS));
        let mut inner = self.inner.write().expect("catalog lock");
        let Inner { namespaces, annotations } = &mut *inner;
        // Taken before the old one is released: the same value keeps its handle.
        let allowed = annotations.acquire(annotation.map(String::as_str));
        let secrets = match namespaces.get_mut(ns) {
            Some(s) => s,
            None => namespaces.entry(ns.into()).or_default(),
        };
        let change = |access| Change { id: SecretId::new(ns, name), access };
        match secrets.insert(name, Known { revision, allowed, seen_in: generation }) {
            None => {
                self.access_changed();
                Some(change(true))
            }
            Some(old) => {
                annotations.release(old.allowed);
                if old.allowed != allowed {
                    self.access_changed();
                }
                (old.revision != revision).then(|| change(old.allowed != allowed))
            }
        }
    }

    fn remove(&self, meta: &ObjectMeta) -> Option<Change> {
        let (ns, name) = (meta.namespace.as_deref()?, meta.name.as_deref()?);
        let mut inner = self.inner.write().expect("catalog lock");
        let Inner { namespaces, annotations } = &mut *inner;
        let secrets = namespaces.get_mut(ns)?;
        let old = secrets.remove(name)?;
        self.access_changed();
        annotations.release(old.allowed);
        if secrets.is_empty() {
            namespaces.remove(ns);
        }
        Some(Change { id: SecretId::new(ns, name), access: true })
    }

    /// Removes the Secrets of `scope` (a namespace, or all) that the list of
    /// `generation` did not see, and names them.
    fn sweep(&self, scope: Option<&str>, generation: u32) -> Vec<Change> {
        let mut gone = Vec::new();
        let mut inner = self.inner.write().expect("catalog lock");
        let Inner { namespaces, annotations } = &mut *inner;
        namespaces.retain(|ns, secrets| {
            if scope.is_some_and(|s| s != &**ns) {
                return true;
            }
            secrets.retain(|name, k| {
                let keep = k.seen_in >= generation;
                if !keep {
                    annotations.release(k.allowed);
                    gone.push(Change { id: SecretId::new(&**ns, name), access: true });
                }
                keep
            });
            !secrets.is_empty()
        });
        if !gone.is_empty() {
            self.access_changed();
        }
        gone
    }

    /// Applies the metadata watch of `scope` and announces what changed; calls
    /// `listed` after each complete list. Returns when nobody listens any more.
    pub async fn follow(
        self: Arc<Self>,
        events: impl futures::Stream<Item = Result<watcher::Event<ObjectMeta>, watcher::Error>> + Send,
        scope: Option<String>,
        changes: ChangeSender,
        listed: impl Fn(),
    ) {
        let mut generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        // Nothing is cached before the first list is done: it announces nothing.
        let mut first_list = true;
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            let news = match event {
                Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m)) => {
                    self.apply(&m, generation).into_iter().collect()
                }
                Ok(watcher::Event::Delete(m)) => self.remove(&m).into_iter().collect(),
                Ok(watcher::Event::Init) => {
                    generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
                    Vec::new()
                }
                Ok(watcher::Event::InitDone) => {
                    let gone = self.sweep(scope.as_deref(), generation);
                    listed();
                    first_list = false;
                    gone
                }
                Err(e) => {
                    tracing::warn!(namespace = scope.as_deref().unwrap_or("*"), error = %e, "Secret watch failed; retrying");
                    Vec::new()
                }
            };
            if first_list {
                continue;
            }
            for change in news {
                if changes.send(change).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(ns: &str, name: &str, rv: &str, allowed: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            resource_version: Some(rv.into()),
            annotations: allowed.map(|a| [(ALLOWED_SERVICE_ACCOUNTS.to_owned(), a.to_owned())].into()),
            ..ObjectMeta::default()
        }
    }

    /// The watch as kube-runtime delivers it, fed by the test: what was announced.
    async fn run(catalog: &Arc<Catalog>, events: Vec<watcher::Event<ObjectMeta>>) -> Vec<String> {
        let (tx, mut rx) = crate::source::change_channel();
        let stream = futures::stream::iter(events.into_iter().map(Ok));
        catalog.clone().follow(stream, None, tx, || {}).await;
        let mut announced = Vec::new();
        while let Ok(c) = rx.try_recv() {
            announced.push(format!("{}{}", c.id, if c.access { " (access)" } else { "" }));
        }
        announced
    }

    /// Every change of who may read a Secret moves the access generation (an
    /// open watch then checks its access again); a new revision with the same
    /// readers does not.
    #[tokio::test]
    async fn the_access_generation_moves_with_every_change_of_readers() {
        use watcher::Event::*;
        let catalog = Arc::new(Catalog::default());
        let mut last = catalog.access_generation();
        let mut step = async |events: Vec<watcher::Event<ObjectMeta>>, moves: bool, what: &str| {
            run(&catalog, events).await;
            let now = catalog.access_generation();
            assert_eq!(now != last, moves, "{what}");
            last = now;
        };
        step(vec![Init, InitApply(meta("shop", "a", "1", Some("web"))), InitDone], true, "a Secret appears").await;
        step(vec![Apply(meta("shop", "a", "2", Some("web")))], false, "a new revision, the same readers").await;
        step(vec![Apply(meta("shop", "a", "3", Some("web,worker")))], true, "its annotation changes").await;
        step(vec![Apply(meta("shop", "a", "4", None))], true, "its annotation goes").await;
        step(vec![Delete(meta("shop", "a", "4", None))], true, "it is deleted").await;
        step(vec![Apply(meta("shop", "b", "1", Some("web")))], true, "another appears").await;
        step(vec![Init, InitDone], true, "it went while the watch was away").await;
        step(vec![Init, InitDone], false, "a re-list that finds nothing new").await;
    }

    #[tokio::test]
    async fn it_announces_changes_and_what_went_while_the_watch_was_away() {
        use watcher::Event::*;
        let catalog = Arc::new(Catalog::default());
        let announced = run(
            &catalog,
            vec![
                // The first list announces nothing: nothing is cached yet.
                Init,
                InitApply(meta("shop", "a", "1", Some("web"))),
                InitApply(meta("shop", "b", "1", Some("web"))),
                InitDone,
                Apply(meta("shop", "a", "2", Some("web,worker"))),
                // The same revision again (a resumed watch) is no news.
                Apply(meta("shop", "a", "2", Some("web,worker"))),
                Delete(meta("shop", "b", "1", None)),
                // Re-listed after a 410: c came, a changed, d was never seen
                // again since it went while the watch was away.
                Apply(meta("other", "d", "1", None)),
                Init,
                InitApply(meta("shop", "a", "3", Some("web"))),
                InitApply(meta("shop", "c", "1", None)),
                InitDone,
            ],
        )
        .await;
        let expected = [
            "shop/a (access)",
            "shop/b (access)",
            "other/d (access)",
            "shop/a (access)",
            "shop/c (access)",
            "other/d (access)",
        ];
        assert_eq!(announced, expected);
        let id = |n: &str| SecretId::new("shop", n);
        assert!(matches!(catalog.readers(&id("a")), Readers::Listed(a) if &*a == "web"));
        assert!(matches!(catalog.readers(&id("c")), Readers::NotAnnotated));
        assert!(matches!(catalog.readers(&id("b")), Readers::Absent));
        assert!(!catalog.contains(&SecretId::new("other", "d")));
        assert!(catalog.is_at(&id("a"), "3") && !catalog.is_at(&id("a"), "2"));
        // One copy of an annotation, however many Secrets carry it; none of
        // a value no Secret says any more.
        assert_eq!(catalog.inner.read().unwrap().annotations.distinct(), 1);

        // A new revision with the same readers: only the content may have changed.
        let announced = run(
            &catalog,
            vec![
                Init,
                InitApply(meta("shop", "a", "3", Some("web"))),
                InitApply(meta("shop", "c", "1", None)),
                InitDone,
                Apply(meta("shop", "a", "4", Some("web"))),
            ],
        )
        .await;
        assert_eq!(announced, ["shop/a"]);
    }
}
