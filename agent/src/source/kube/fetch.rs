//! A Secret's data, read from the API server when the agent needs it (the
//! watch carries metadata only). The cache asks one secret at a time, so one
//! read is in flight per Secret whatever the number of callers.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use super::convention::MANAGED_LABEL;
use crate::metrics::Metrics;
use crate::secret::SecretId;
use crate::source::Unavailable;

/// A read of one Secret gets this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The Secret `id` as it is now; `None` when it is gone or no longer managed.
pub async fn secret(client: &Client, id: &SecretId, metrics: &Metrics) -> Result<Option<Secret>, Unavailable> {
    metrics.secret_fetches.inc();
    let api: Api<Secret> = Api::namespaced(client.clone(), &id.namespace);
    let got = tokio::time::timeout(FETCH_TIMEOUT, api.get_opt(&id.name))
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
