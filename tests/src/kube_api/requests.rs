//! Counts of the requests served, by verb and resource, so tests can assert how much
//! traffic a client caused (e.g. how many TokenReviews the agent sent).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

#[derive(Default)]
pub struct RequestCounts(Mutex<BTreeMap<(String, String), u64>>);

/// One row of `GET /_test/requests`.
#[derive(Serialize)]
pub struct RequestCount {
    pub verb: String,
    pub resource: String,
    pub count: u64,
}

impl RequestCounts {
    pub fn record(&self, verb: &str, resource: &str) {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *counts.entry((verb.to_owned(), resource.to_owned())).or_default() += 1;
    }

    pub fn get(&self, verb: &str, resource: &str) -> u64 {
        let counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(&(verb.to_owned(), resource.to_owned())).copied().unwrap_or(0)
    }

    pub fn all(&self) -> Vec<RequestCount> {
        let counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        counts
            .iter()
            .map(|((verb, resource), count)| RequestCount {
                verb: verb.clone(),
                resource: resource.clone(),
                count: *count,
            })
            .collect()
    }
}
