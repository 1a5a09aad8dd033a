//! The pods scheduled on this node, from a watch filtered by `spec.nodeName`.
//! It tells whether a token's pod runs here (where TokenReview does not name
//! the node), and which pods are gone: a deleted pod's token stays valid for
//! the API server a while (deletion timestamp + 60 s, plus its 10 s
//! authentication cache), but its calls and watches here end as soon as the
//! watch reports the pod object removed. A Terminating pod is still here: its
//! processes may need their secrets while they shut down.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

/// How long a gone pod is remembered: past this, TokenReview refuses its
/// tokens by itself (the API server checks that a token's pod exists).
const REMEMBER_GONE: Duration = Duration::from_secs(600);

#[derive(Default)]
struct Known {
    /// UID -> namespace/name of the pods on this node now.
    here: HashMap<String, (String, String)>,
    /// UIDs of pods removed, and when.
    gone: HashMap<String, Instant>,
}

impl Known {
    fn remove(&mut self, uid: &str, now: Instant) {
        if self.here.remove(uid).is_some() {
            self.gone.insert(uid.to_owned(), now);
        }
        self.gone.retain(|_, at| now.duration_since(*at) < REMEMBER_GONE);
    }
}

pub struct NodePods {
    known: Arc<Mutex<Known>>,
    synced: watch::Receiver<bool>,
    /// Bumped whenever a pod goes: open watches check their caller again.
    gone: watch::Receiver<u64>,
}

impl NodePods {
    pub fn start(client: Client, node: &str) -> NodePods {
        // Metadata only: a pod's name, namespace and UID are all this needs.
        let api: Api<PartialObjectMeta<Pod>> = Api::all(client);
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let known = Arc::new(Mutex::new(Known::default()));
        let (synced_tx, synced) = watch::channel(false);
        let (gone_tx, gone) = watch::channel(0u64);
        let events = watcher(api, config).default_backoff();
        tokio::spawn(follow(events, known.clone(), synced_tx, gone_tx));
        NodePods { known, synced, gone }
    }

    pub async fn synced(&self) {
        let _ = self.synced.clone().wait_for(|s| *s).await;
    }

    /// True when the pod `namespace/name` with this UID is scheduled on this node.
    pub fn runs_here(&self, namespace: &str, name: &str, uid: &str) -> bool {
        let known = self.known.lock().expect("pods lock");
        known.here.get(uid).is_some_and(|(ns, n)| ns == namespace && n == name)
    }

    /// True when the pod with this UID was on this node and is gone.
    pub fn is_gone(&self, uid: &str) -> bool {
        self.known.lock().expect("pods lock").gone.contains_key(uid)
    }

    pub fn gone(&self) -> watch::Receiver<u64> {
        self.gone.clone()
    }
}

/// Applies the watch's events. A re-list replaces what is known: pods missing
/// from it went while the watch was down, and count as gone too.
async fn follow(
    events: impl futures::Stream<Item = Result<watcher::Event<PartialObjectMeta<Pod>>, watcher::Error>> + Send + 'static,
    known: Arc<Mutex<Known>>,
    synced: watch::Sender<bool>,
    gone: watch::Sender<u64>,
) {
    let uid_of = |p: &PartialObjectMeta<Pod>| p.metadata.uid.clone().unwrap_or_default();
    let place_of = |p: &PartialObjectMeta<Pod>| {
        (p.metadata.namespace.clone().unwrap_or_default(), p.metadata.name.clone().unwrap_or_default())
    };
    let mut listing: Option<HashMap<String, (String, String)>> = None;
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let now = Instant::now();
        let went = match event {
            Ok(watcher::Event::Apply(p)) => {
                known.lock().expect("pods lock").here.insert(uid_of(&p), place_of(&p));
                false
            }
            Ok(watcher::Event::Delete(p)) => {
                known.lock().expect("pods lock").remove(&uid_of(&p), now);
                true
            }
            Ok(watcher::Event::Init) => {
                listing = Some(HashMap::new());
                false
            }
            Ok(watcher::Event::InitApply(p)) => {
                listing.get_or_insert_default().insert(uid_of(&p), place_of(&p));
                false
            }
            Ok(watcher::Event::InitDone) => {
                let listed = listing.take().unwrap_or_default();
                let mut k = known.lock().expect("pods lock");
                let missing: Vec<String> = k.here.keys().filter(|uid| !listed.contains_key(*uid)).cloned().collect();
                for uid in &missing {
                    k.remove(uid, now);
                }
                let listed_uids: HashSet<&String> = listed.keys().collect();
                k.gone.retain(|uid, _| !listed_uids.contains(uid));
                k.here.extend(listed);
                drop(k);
                synced.send_replace(true);
                !missing.is_empty()
            }
            Err(e) => {
                tracing::warn!(error = %e, "pod watch failed; retrying");
                false
            }
        };
        if went {
            gone.send_modify(|n| *n += 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, uid: &str) -> PartialObjectMeta<Pod> {
        let mut p = PartialObjectMeta::<Pod>::default();
        p.metadata.namespace = Some("shop".into());
        p.metadata.name = Some(name.into());
        p.metadata.uid = Some(uid.into());
        p
    }

    /// The watch as kube-runtime delivers it, fed by the test.
    fn run(events: Vec<watcher::Event<PartialObjectMeta<Pod>>>) -> (NodePods, tokio::task::JoinHandle<()>) {
        let known = Arc::new(Mutex::new(Known::default()));
        let (synced_tx, synced) = watch::channel(false);
        let (gone_tx, gone) = watch::channel(0u64);
        let stream = futures::stream::iter(events.into_iter().map(Ok));
        let task = tokio::spawn(follow(stream, known.clone(), synced_tx, gone_tx));
        (NodePods { known, synced, gone }, task)
    }

    #[tokio::test]
    async fn pods_come_and_go_and_a_relist_finds_the_ones_that_went_meanwhile() {
        use watcher::Event::*;
        let (pods, task) = run(vec![
            Init,
            InitApply(pod("a", "uid-a")),
            InitApply(pod("b", "uid-b")),
            InitDone,
            Apply(pod("c", "uid-c")),
            Delete(pod("a", "uid-a")),
            // The watch restarts; b went while it was down.
            Init,
            InitApply(pod("c", "uid-c")),
            InitDone,
        ]);
        task.await.unwrap();
        pods.synced().await;
        assert!(pods.runs_here("shop", "c", "uid-c"));
        assert!(!pods.runs_here("shop", "c", "uid-a"), "name and UID must both match");
        assert!(pods.is_gone("uid-a") && pods.is_gone("uid-b"));
        assert!(!pods.is_gone("uid-c") && !pods.is_gone("uid-never-seen"));
        assert_eq!(*pods.gone().borrow(), 2, "one bump for the delete, one for the re-list");
    }
}
