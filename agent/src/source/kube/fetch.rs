//! A Secret's data, read from the API server when the agent needs it (the
//! watch carries metadata only). The cache asks one secret at a time, so one
//! read is in flight per Secret whatever the number of callers.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::GetParams;
use kube::{Api, Client};

use super::convention::MANAGED_LABEL;
use crate::metrics::Metrics;
use crate::secret::SecretId;
use crate::source::Unavailable;

/// A read of one Secret (both reads, when the cache's is not kept) gets this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The Secret `id` at the revision the watch announced or newer; `None`
/// when it is gone or no longer managed. `announced` says whether a revision
/// is the one the catalog holds for `id`.
///
/// First from the API server's watch cache (`resourceVersion=0`): the
/// metadata watch is fed by that cache, so it already holds what the watch
/// announced, and the read skips etcd: 1.0 ms against 2.0 ms in the
/// benchmark's propagation, on the path of every change. That read may be
/// older than the announcement (another API server's cache behind this
/// one's), so it is kept only when its revision is the announced one;
/// anything else (gone, older, newer, an error) is read again from etcd.
pub async fn secret(
    client: &Client,
    id: &SecretId,
    metrics: &Metrics,
    announced: impl Fn(&str) -> bool,
) -> Result<Option<Secret>, Unavailable> {
    metrics.secret_fetches.inc();
    let api: Api<Secret> = Api::namespaced(client.clone(), &id.namespace);
    let read = async {
        match api.get_with(&id.name, &GetParams::any()).await {
            Ok(s) if s.metadata.resource_version.as_deref().is_some_and(&announced) => Ok(Some(s)),
            _ => api.get_opt(&id.name).await,
        }
    };
    let got = tokio::time::timeout(FETCH_TIMEOUT, read)
        .await
        .map_err(|_| Unavailable(format!("reading Secret {id}: the Kubernetes API did not answer within {FETCH_TIMEOUT:?}")))?
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 403 => Unavailable(format!(
                "reading Secret {id}: forbidden: the agent's ServiceAccount may not get Secrets there (deploy/rbac.yaml)"
            )),
            other => Unavailable(format!("reading Secret {id}: the Kubernetes API: {other}")),
        })?;
    // Unlabeled since the watch saw it: no longer ours to serve.
    Ok(got.filter(|s| s.metadata.labels.as_ref().and_then(|l| l.get(MANAGED_LABEL)).is_some_and(|v| v == "true")))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::client::Body;

    use super::*;

    /// A fake API server whose watch cache holds `cached` (None: the Secret
    /// is not there) and etcd `current`; it notes each read's query.
    fn api(cached: Option<&'static str>, current: &'static str) -> (Client, Arc<Mutex<Vec<String>>>) {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let noted = asked.clone();
        let service = tower::service_fn(move |request: http::Request<Body>| {
            let query = request.uri().query().unwrap_or_default().to_owned();
            let revision = if query.contains("resourceVersion=0") { cached } else { Some(current) };
            noted.lock().unwrap().push(query);
            async move { Ok::<_, std::convert::Infallible>(answer(revision)) }
        });
        (Client::new(service, "default"), asked)
    }

    fn answer(revision: Option<&str>) -> http::Response<Body> {
        let (code, body) = match revision {
            Some(rv) => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some("app".into()),
                        namespace: Some("default".into()),
                        resource_version: Some(rv.into()),
                        labels: Some(BTreeMap::from([(MANAGED_LABEL.to_owned(), "true".to_owned())])),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                (200, serde_json::to_vec(&secret).unwrap())
            }
            None => {
                let status = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
                (404, status.as_bytes().to_vec())
            }
        };
        http::Response::builder().status(code).body(Body::from(body)).unwrap()
    }

    async fn read(cached: Option<&'static str>, current: &'static str) -> (Option<String>, Vec<String>) {
        let (client, asked) = api(cached, current);
        let got = secret(&client, &SecretId::new("default", "app"), &Metrics::default(), |rv| rv == "7").await.unwrap();
        let queries = asked.lock().unwrap().clone();
        (got.and_then(|s| s.metadata.resource_version), queries)
    }

    #[tokio::test]
    async fn the_announced_revision_comes_from_the_watch_cache_alone() {
        let (revision, asked) = read(Some("7"), "7").await;
        assert_eq!(revision.as_deref(), Some("7"));
        assert_eq!(asked, ["&resourceVersion=0"]);
    }

    #[tokio::test]
    async fn a_cache_behind_the_announcement_is_read_again_from_etcd() {
        for cached in [Some("6"), None] {
            let (revision, asked) = read(cached, "7").await;
            assert_eq!(revision.as_deref(), Some("7"), "cache at {cached:?}");
            assert_eq!(asked.len(), 2, "cache at {cached:?}: {asked:?}");
            assert!(!asked[1].contains("resourceVersion"), "the second read is a quorum read: {asked:?}");
        }
    }
}
