//! One namespace's Secrets as the catalog keeps them: fixed-size entries in
//! one hash table, pointing into one string that holds their names. A node
//! keeps an entry for every managed Secret of the cluster, so an entry costs
//! its table slot (25 bytes) and its name's bytes, with no allocation of its
//! own: a map of boxed names and pointers measured about 155 bytes per Secret.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;
use hashbrown::hash_table::Entry as Slot;

use super::annotations::Handle;

/// What the catalog knows of one Secret beside its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    /// A hash of the resourceVersion: only compared for equality.
    pub revision: u64,
    /// Its allowed-service-accounts annotation.
    pub allowed: Handle,
    /// The list generation that last saw it (see `Catalog::follow`).
    pub seen_in: u32,
}

struct Entry {
    /// Where its name is in `Secrets::names` (names are at most 253 bytes).
    name_at: u32,
    name_len: u32,
    known: Known,
}

#[derive(Default)]
pub struct Secrets {
    table: HashTable<Entry>,
    names: String,
    /// Bytes of `names` that no entry points to any more.
    stale: usize,
    /// SipHash with a key of its own, as std's HashMap: Secret names are
    /// chosen by tenants, who must not be able to make them collide.
    hasher: RandomState,
}

fn name_of<'a>(names: &'a str, e: &Entry) -> &'a str {
    &names[e.name_at as usize..][..e.name_len as usize]
}

impl Secrets {
    pub fn get(&self, name: &str) -> Option<Known> {
        let hash = self.hasher.hash_one(name);
        self.table.find(hash, |e| name_of(&self.names, e) == name).map(|e| e.known)
    }

    /// Records `name` as `known`; what was known of it before.
    pub fn insert(&mut self, name: &str, known: Known) -> Option<Known> {
        let hash = self.hasher.hash_one(name);
        let Secrets { table, names, hasher, .. } = self;
        let slot = table.entry(hash, |e| name_of(names, e) == name, |e| hasher.hash_one(name_of(names, e)));
        match slot {
            Slot::Occupied(mut o) => Some(std::mem::replace(&mut o.get_mut().known, known)),
            Slot::Vacant(v) => {
                // Compaction keeps `names` within twice the live names: 4 GiB
                // of them would take some 17 million Secrets in one namespace.
                let name_at = u32::try_from(names.len()).expect("under 4 GiB of Secret names in one namespace");
                names.push_str(name);
                v.insert(Entry { name_at, name_len: name.len() as u32, known });
                None
            }
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<Known> {
        let hash = self.hasher.hash_one(name);
        let found = self.table.find_entry(hash, |e| name_of(&self.names, e) == name).ok()?;
        let (removed, _) = found.remove();
        self.stale += removed.name_len as usize;
        self.compact();
        Some(removed.known)
    }

    /// Keeps the Secrets `keep` says to keep.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &Known) -> bool) {
        let Secrets { table, names, stale, .. } = self;
        table.retain(|e| {
            let kept = keep(name_of(names, e), &e.known);
            if !kept {
                *stale += e.name_len as usize;
            }
            kept
        });
        self.compact();
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Once most of `names` is stale, rewrites it with the live names only,
    /// and gives back a table mostly empty: memory follows the cluster down.
    fn compact(&mut self) {
        if self.stale * 2 <= self.names.len() {
            return;
        }
        let mut names = String::with_capacity(self.names.len() - self.stale);
        for e in self.table.iter_mut() {
            let name_at = names.len() as u32;
            names.push_str(name_of(&self.names, e));
            e.name_at = name_at;
        }
        self.names = names;
        self.stale = 0;
        if self.table.len() * 4 < self.table.capacity() {
            let Secrets { table, names, hasher, .. } = self;
            table.shrink_to_fit(|e| hasher.hash_one(name_of(names, e)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(revision: u64) -> Known {
        Known { revision, allowed: Handle::NONE, seen_in: 1 }
    }

    #[test]
    fn names_stay_found_through_removals_and_compaction() {
        let mut secrets = Secrets::default();
        for i in 0..1000u64 {
            assert_eq!(secrets.insert(&format!("secret-{i}"), known(i)), None);
        }
        assert_eq!(secrets.insert("secret-7", known(70)), Some(known(7)));
        // Removing most of them compacts the names more than once.
        for i in (0..1000u64).filter(|i| i % 10 != 0) {
            assert_eq!(secrets.remove(&format!("secret-{i}")).map(|k| k.revision), Some(if i == 7 { 70 } else { i }));
        }
        // 100 names of about 10 bytes are left, of nearly 10,000 bytes: at
        // most as many stale bytes as live ones remain.
        let live: usize = (0..1000).step_by(10).map(|i| format!("secret-{i}").len()).sum();
        assert!(secrets.names.len() <= 2 * live, "the removed names were given back: {} bytes", secrets.names.len());
        for i in 0..1000u64 {
            let expected = (i % 10 == 0).then(|| known(i));
            assert_eq!(secrets.get(&format!("secret-{i}")), expected, "secret-{i}");
        }
        // And they keep working after it: a name comes back, others go by retain.
        assert_eq!(secrets.insert("secret-3", known(3)), None);
        secrets.retain(|name, _| name != "secret-0");
        assert_eq!(secrets.get("secret-0"), None);
        assert_eq!(secrets.get("secret-3"), Some(known(3)));
        assert_eq!(secrets.get("secret-990"), Some(known(990)));
        secrets.retain(|_, _| false);
        assert!(secrets.is_empty() && secrets.names.is_empty());
    }
}
