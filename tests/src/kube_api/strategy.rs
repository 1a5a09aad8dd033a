//! What the apiserver does to an object between decoding and storing it: per-kind
//! defaults and normalisation (`PrepareForCreate`/`PrepareForUpdate` of each registry
//! strategy) and the admission checks that consult other objects.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{NamespaceSpec, NamespaceStatus, PodStatus, Secret};

use super::error::ApiError;
use super::object::{Kind, Object};
use super::store::Store;

/// The label every namespace carries with its own name (since 1.21).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// `stringData` is write-only: merged into `data` (winning over it) and dropped.
fn merge_string_data(secret: &mut Secret) {
    if let Some(string_data) = secret.string_data.take() {
        let data = secret.data.get_or_insert_with(BTreeMap::new);
        for (key, value) in string_data {
            data.insert(key, ByteString(value.into_bytes()));
        }
    }
}

/// Defaults and server-owned fields of a new object.
pub fn prepare_create(object: &mut Object) {
    match object {
        Object::Secret(secret) => {
            merge_string_data(secret);
            secret.type_.get_or_insert_with(|| "Opaque".to_owned());
        }
        Object::Pod(pod) => {
            if let Some(spec) = pod.spec.as_mut() {
                // The ServiceAccount admission plugin's default, then the API defaults.
                spec.service_account_name.get_or_insert_with(|| "default".to_owned());
                spec.restart_policy.get_or_insert_with(|| "Always".to_owned());
                spec.dns_policy.get_or_insert_with(|| "ClusterFirst".to_owned());
                spec.scheduler_name.get_or_insert_with(|| "default-scheduler".to_owned());
                spec.termination_grace_period_seconds.get_or_insert(30);
            }
            // Status belongs to the kubelet: a new pod is Pending whatever the client sent.
            pod.status = Some(PodStatus { phase: Some("Pending".to_owned()), ..Default::default() });
        }
        Object::Namespace(ns) => {
            let name = ns.metadata.name.clone().unwrap_or_default();
            ns.metadata.labels.get_or_insert_with(BTreeMap::new).insert(NAMESPACE_NAME_LABEL.to_owned(), name);
            ns.spec
                .get_or_insert_with(NamespaceSpec::default)
                .finalizers
                .get_or_insert_with(|| vec!["kubernetes".to_owned()]);
            ns.status = Some(NamespaceStatus { phase: Some("Active".to_owned()), ..Default::default() });
        }
        Object::Node(_) | Object::ServiceAccount(_) => {}
    }
}

/// Server-owned fields an update keeps from the stored object.
pub fn prepare_update(new: &mut Object, old: &Object) {
    let old_meta = old.meta();
    let meta = new.meta_mut();
    meta.uid.clone_from(&old_meta.uid);
    meta.creation_timestamp.clone_from(&old_meta.creation_timestamp);
    meta.deletion_timestamp.clone_from(&old_meta.deletion_timestamp);
    match (new, old) {
        (Object::Secret(secret), Object::Secret(_)) => merge_string_data(secret),
        // Status is written through the status subresource (the kubelet's), not by PUT.
        (Object::Pod(pod), Object::Pod(old)) => pod.status.clone_from(&old.status),
        (Object::Node(node), Object::Node(old)) => node.status.clone_from(&old.status),
        (Object::Namespace(ns), Object::Namespace(old)) => {
            ns.status.clone_from(&old.status);
            let name = ns.metadata.name.clone().unwrap_or_default();
            ns.metadata.labels.get_or_insert_with(BTreeMap::new).insert(NAMESPACE_NAME_LABEL.to_owned(), name);
        }
        _ => {}
    }
}

/// Admission checks that look at other objects.
pub fn admit_create(store: &Store, object: &Object) -> Result<(), ApiError> {
    if let Object::Pod(pod) = object {
        // The ServiceAccount admission plugin refuses pods whose account does not exist.
        let sa = pod.spec.as_ref().and_then(|s| s.service_account_name.as_deref()).unwrap_or("default");
        let ns = object.namespace();
        if store.get(Kind::ServiceAccount, ns, sa).is_none() {
            return Err(ApiError::Forbidden(format!(
                "pods {:?} is forbidden: error looking up service account {ns}/{sa}: serviceaccount {sa:?} not found",
                object.name()
            )));
        }
    }
    Ok(())
}
