//! The pods scheduled on this node, from a watch filtered by `spec.nodeName`:
//! where TokenReview does not report the token's node, this tells whether the
//! token's pod runs here.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

pub struct NodePods {
    store: Store<Pod>,
}

impl NodePods {
    pub fn start(client: Client, node: &str) -> NodePods {
        let api: Api<Pod> = Api::all(client);
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let (store, writer) = reflector::store();
        let events = reflector::reflector(writer, watcher(api, config).default_backoff());
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "pod watch failed; retrying");
                }
            }
        });
        NodePods { store }
    }

    pub async fn synced(&self) {
        let _ = self.store.wait_until_ready().await;
    }

    /// True when the pod `namespace/name` with this UID is scheduled on this node.
    pub fn runs_here(&self, namespace: &str, name: &str, uid: &str) -> bool {
        self.store
            .get(&ObjectRef::new(name).within(namespace))
            .is_some_and(|pod| pod.metadata.uid.as_deref() == Some(uid))
    }
}
