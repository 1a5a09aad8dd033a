//! The object store: etcd's role. One global resourceVersion counter, a bounded event
//! history (what etcd keeps until compaction, and the apiserver's watch cache serves
//! watches from), and a broadcast of new events to open watches. Every change goes
//! through one lock, so resourceVersions are handed out, recorded and broadcast in order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::broadcast;

use super::clock;
use super::error::ApiError;
use super::ids;
use super::object::{Kind, Object};
use super::selector::Filter;

/// How far back a watch may be buffered by the broadcast before it is closed as too slow.
const BROADCAST_CAPACITY: usize = 16 * 1024;

type Key = (Kind, String, String);

fn key_of(object: &Object) -> Key {
    (object.kind(), object.namespace().to_owned(), object.name().to_owned())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Added,
    Modified,
    Deleted,
}

/// One change, as recorded in the history and sent to watches.
#[derive(Debug)]
pub struct Event {
    pub resource_version: u64,
    pub change: Change,
    /// The new state; for a deletion, the last state stamped with the deletion's version.
    pub object: Object,
    /// The state before a modification, so a selector watch can tell an object that
    /// stopped matching (sent as DELETED) from one that started to (sent as ADDED).
    pub previous: Option<Object>,
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchFrom {
    /// `resourceVersion` unset or "0": the current objects as synthetic ADDED events first.
    Current,
    /// Everything after this version.
    After(u64),
}

/// The beginning of a watch: events to replay, then the live feed.
pub struct WatchStart {
    pub initial: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<Arc<Event>>,
    /// The version the watch is consistent with before any live event.
    pub resource_version: u64,
}

struct Inner {
    objects: BTreeMap<Key, Object>,
    resource_version: u64,
    history: VecDeque<Arc<Event>>,
    /// Every event after this version is still in `history`.
    history_floor: u64,
}

pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<Event>>,
    history_size: usize,
}

impl Inner {
    fn next_version(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    fn record(&mut self, store: &Store, change: Change, object: Object, previous: Option<Object>) {
        let event = Arc::new(Event { resource_version: self.resource_version, change, object, previous });
        if store.history_size == 0 {
            self.history_floor = self.resource_version;
        } else {
            if self.history.len() == store.history_size
                && let Some(oldest) = self.history.pop_front()
            {
                self.history_floor = oldest.resource_version;
            }
            self.history.push_back(event.clone());
        }
        // No receiver means no open watch: nothing to do.
        let _ = store.events.send(event);
    }

    fn objects_of(&self, kind: Kind) -> impl Iterator<Item = &Object> {
        self.objects
            .range((kind, String::new(), String::new())..)
            .take_while(move |((k, _, _), _)| *k == kind)
            .map(|(_, o)| o)
    }
}

impl Store {
    pub fn new(history_size: usize) -> Self {
        let inner = Inner { objects: BTreeMap::new(), resource_version: 1, history: VecDeque::new(), history_floor: 1 };
        Self { inner: Mutex::new(inner), events: broadcast::channel(BROADCAST_CAPACITY).0, history_size }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves consistent data (every change
        // is applied whole or not at all), so keep serving.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn resource_version(&self) -> u64 {
        self.lock().resource_version
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Object> {
        self.lock().objects.get(&(kind, namespace.to_owned(), name.to_owned())).cloned()
    }

    /// Matching objects in key order (namespace, then name, as etcd returns them) and the
    /// version they are current at.
    pub fn list(&self, kind: Kind, filter: &Filter) -> (Vec<Object>, u64) {
        let inner = self.lock();
        let items = inner.objects_of(kind).filter(|o| filter.matches(o)).cloned().collect();
        (items, inner.resource_version)
    }

    /// Stores a new object: assigns uid, creationTimestamp and resourceVersion (and a
    /// name from `generateName`). The namespace must exist, the name must be free.
    pub fn create(&self, mut object: Object, dry_run: bool) -> Result<Object, ApiError> {
        let mut inner = self.lock();
        let kind = object.kind();
        if kind.namespaced() {
            let ns = object.namespace().to_owned();
            if !inner.objects.contains_key(&(Kind::Namespace, String::new(), ns.clone())) {
                return Err(Kind::Namespace.not_found(&ns));
            }
        }
        if object.name().is_empty() {
            let prefix = object.meta().generate_name.clone().unwrap_or_default();
            object.meta_mut().name = Some(loop {
                let candidate = format!("{prefix}{}", ids::name_suffix());
                if !inner.objects.contains_key(&(kind, object.namespace().to_owned(), candidate.clone())) {
                    break candidate;
                }
            });
        }
        let key = key_of(&object);
        if inner.objects.contains_key(&key) {
            return Err(ApiError::AlreadyExists { resource: kind.group_resource(), name: key.2 });
        }
        let meta = object.meta_mut();
        meta.uid = Some(ids::uid());
        meta.creation_timestamp = Some(clock::now());
        meta.deletion_timestamp = None;
        meta.resource_version = None;
        if dry_run {
            return Ok(object);
        }
        let version = inner.next_version();
        object.meta_mut().resource_version = Some(version.to_string());
        inner.objects.insert(key, object.clone());
        inner.record(self, Change::Added, object.clone(), None);
        Ok(object)
    }

    /// Replaces an object with what `change` makes of the current one, atomically, so
    /// that preconditions checked inside `change` (resourceVersion, uid) still hold when
    /// the result is stored. An update that changes nothing keeps its version and sends
    /// no event, as with etcd.
    pub fn update(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        dry_run: bool,
        change: impl FnOnce(&Object) -> Result<Object, ApiError>,
    ) -> Result<Object, ApiError> {
        let mut inner = self.lock();
        let key = (kind, namespace.to_owned(), name.to_owned());
        let old = inner.objects.get(&key).ok_or_else(|| kind.not_found(name))?;
        let mut new = change(old)?;
        new.meta_mut().resource_version = old.meta().resource_version.clone();
        if new == *old || dry_run {
            return Ok(new);
        }
        let version = inner.next_version();
        new.meta_mut().resource_version = Some(version.to_string());
        let previous = inner.objects.insert(key, new.clone());
        inner.record(self, Change::Modified, new.clone(), previous);
        Ok(new)
    }

    /// Removes an object once `check` (preconditions) accepts it. Deleting a namespace
    /// removes everything in it first, as the namespace controller would.
    pub fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        dry_run: bool,
        check: impl FnOnce(&Object) -> Result<(), ApiError>,
    ) -> Result<Object, ApiError> {
        let mut inner = self.lock();
        let key = (kind, namespace.to_owned(), name.to_owned());
        let existing = inner.objects.get(&key).ok_or_else(|| kind.not_found(name))?;
        check(existing)?;
        if dry_run {
            return Ok(existing.clone());
        }
        if kind == Kind::Namespace {
            let contents: Vec<Key> =
                inner.objects.keys().filter(|(k, ns, _)| k.namespaced() && ns == name).cloned().collect();
            for key in contents {
                self.remove(&mut inner, &key);
            }
        }
        self.remove(&mut inner, &key).ok_or_else(|| kind.not_found(name))
    }

    fn remove(&self, inner: &mut Inner, key: &Key) -> Option<Object> {
        let mut object = inner.objects.remove(key)?;
        let version = inner.next_version();
        object.meta_mut().resource_version = Some(version.to_string());
        inner.record(self, Change::Deleted, object.clone(), None);
        Some(object)
    }

    /// Starts a watch on `kind`. Subscribing under the lock guarantees no event falls
    /// between the replayed ones and the live feed.
    pub fn watch(&self, kind: Kind, from: WatchFrom) -> Result<WatchStart, ApiError> {
        let inner = self.lock();
        let current = inner.resource_version;
        let initial = match from {
            WatchFrom::Current => inner
                .objects_of(kind)
                .map(|o| {
                    let resource_version =
                        o.meta().resource_version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(current);
                    Arc::new(Event { resource_version, change: Change::Added, object: o.clone(), previous: None })
                })
                .collect(),
            WatchFrom::After(version) if version < inner.history_floor => {
                return Err(ApiError::Expired { requested: version, oldest: inner.history_floor });
            }
            WatchFrom::After(version) if version > current => {
                return Err(ApiError::TooLargeResourceVersion { requested: version, current });
            }
            WatchFrom::After(version) => inner
                .history
                .iter()
                .filter(|e| e.resource_version > version && e.object.kind() == kind)
                .cloned()
                .collect(),
        };
        Ok(WatchStart { initial, live: self.events.subscribe(), resource_version: current })
    }

    /// Forgets the history, as an etcd compaction does: a watch from any earlier
    /// version then gets 410 Gone.
    pub fn expire_history(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.history_floor = inner.resource_version;
    }
}
