//! Validation as the apiserver does it (`apimachinery/pkg/util/validation` and
//! `pkg/apis/core/validation`), for the fields clients of this server are likely to get
//! wrong: names, labels, annotations, Secret data and types, Pod containers, and the
//! fields that an update may not change. Messages follow the real ones.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Pod, PodSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::error::{FieldError, FieldErrorKind};
use super::object::{Kind, Object};

const DNS_LABEL_MAX: usize = 63;
const DNS_SUBDOMAIN_MAX: usize = 253;
const QUALIFIED_NAME_MAX: usize = 63;
const LABEL_VALUE_MAX: usize = 63;
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;
const SECRET_MAX_BYTES: usize = 1024 * 1024;

const DNS_LABEL_FMT: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS_SUBDOMAIN_FMT: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const QUALIFIED_NAME_FMT: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_FMT: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const CONFIG_KEY_FMT: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";
const IMMUTABLE: &str = "field is immutable";

fn too_long(max: usize) -> String {
    format!("must be no more than {max} characters")
}

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn is_dns_label_body(s: &str) -> bool {
    s.starts_with(is_lower_alnum) && s.ends_with(is_lower_alnum) && s.chars().all(|c| is_lower_alnum(c) || c == '-')
}

/// Problems with `value` as an RFC 1123 label (namespace names, container names).
pub fn dns_label_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS_LABEL_MAX {
        errs.push(too_long(DNS_LABEL_MAX));
    }
    if !is_dns_label_body(value) {
        errs.push(DNS_LABEL_FMT.to_owned());
    }
    errs
}

/// Problems with `value` as an RFC 1123 subdomain (most object names).
pub fn dns_subdomain_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS_SUBDOMAIN_MAX {
        errs.push(too_long(DNS_SUBDOMAIN_MAX));
    }
    if !value.split('.').all(is_dns_label_body) {
        errs.push(DNS_SUBDOMAIN_FMT.to_owned());
    }
    errs
}

fn is_name_part(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Problems with `value` as a qualified name (`prefix/name`): label and annotation keys.
pub fn qualified_name_errors(value: &str) -> Vec<String> {
    let (prefix, name) = match value.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, value),
    };
    let mut errs = Vec::new();
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            errs.push("prefix part must be non-empty".to_owned());
        } else {
            errs.extend(dns_subdomain_errors(prefix).into_iter().map(|e| format!("prefix part {e}")));
        }
    }
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else {
        if name.len() > QUALIFIED_NAME_MAX {
            errs.push(format!("name part {}", too_long(QUALIFIED_NAME_MAX)));
        }
        if !is_name_part(name) {
            errs.push(QUALIFIED_NAME_FMT.to_owned());
        }
    }
    errs
}

/// Problems with `value` as a label value (empty is fine).
pub fn label_value_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > LABEL_VALUE_MAX {
        errs.push(too_long(LABEL_VALUE_MAX));
    }
    if !value.is_empty() && !is_name_part(value) {
        errs.push(LABEL_VALUE_FMT.to_owned());
    }
    errs
}

fn config_key_errors(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if key.len() > DNS_SUBDOMAIN_MAX {
        errs.push(too_long(DNS_SUBDOMAIN_MAX));
    }
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        errs.push(CONFIG_KEY_FMT.to_owned());
    }
    if key == "." || key == ".." {
        errs.push("must not be '.' or '..'".to_owned());
    } else if key.starts_with("..") {
        errs.push("must not start with '..'".to_owned());
    }
    errs
}

fn push_all(errs: &mut Vec<FieldError>, field: &str, value: &str, msgs: Vec<String>) {
    errs.extend(msgs.into_iter().map(|m| FieldError::invalid(field, value, m)));
}

/// Name rules differ per kind: namespaces are labels, the rest subdomains.
fn name_errors(kind: Kind, name: &str) -> Vec<String> {
    match kind {
        Kind::Namespace => dns_label_errors(name),
        Kind::Node | Kind::ServiceAccount | Kind::Secret | Kind::Pod => dns_subdomain_errors(name),
    }
}

fn validate_meta(kind: Kind, meta: &ObjectMeta, errs: &mut Vec<FieldError>) {
    match meta.name.as_deref() {
        Some(name) if !name.is_empty() => push_all(errs, "metadata.name", name, name_errors(kind, name)),
        _ => errs.push(FieldError::required("metadata.name", "name or generateName is required")),
    }
    for (key, value) in meta.labels.iter().flatten() {
        push_all(errs, "metadata.labels", key, qualified_name_errors(key));
        push_all(errs, &format!("metadata.labels[{key}]"), value, label_value_errors(value));
    }
    let mut annotation_bytes = 0;
    for (key, value) in meta.annotations.iter().flatten() {
        push_all(errs, "metadata.annotations", key, qualified_name_errors(&key.to_lowercase()));
        annotation_bytes += key.len() + value.len();
    }
    if annotation_bytes > ANNOTATIONS_MAX_BYTES {
        errs.push(FieldError {
            field: "metadata.annotations".to_owned(),
            kind: FieldErrorKind::TooLong(ANNOTATIONS_MAX_BYTES),
        });
    }
}

/// Everything that must hold for an object to be stored, new or updated.
pub fn validate(object: &Object) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_meta(object.kind(), object.meta(), &mut errs);
    match object {
        Object::Secret(secret) => validate_secret(secret, &mut errs),
        Object::Pod(pod) => validate_pod(pod, &mut errs),
        Object::Namespace(_) | Object::Node(_) | Object::ServiceAccount(_) => {}
    }
    errs
}

fn validate_secret(secret: &Secret, errs: &mut Vec<FieldError>) {
    let data = secret.data.as_ref();
    let mut total = 0;
    for (key, value) in data.into_iter().flatten() {
        push_all(errs, &format!("data[{key}]"), key, config_key_errors(key));
        total += value.0.len();
    }
    if total > SECRET_MAX_BYTES {
        errs.push(FieldError { field: "data".to_owned(), kind: FieldErrorKind::TooLong(SECRET_MAX_BYTES) });
    }
    let has = |key: &str| data.is_some_and(|d| d.contains_key(key));
    let require = |errs: &mut Vec<FieldError>, key: &str| {
        if !has(key) {
            errs.push(FieldError::required(format!("data[{key}]"), ""));
        }
    };
    match secret.type_.as_deref().unwrap_or("Opaque") {
        "kubernetes.io/service-account-token" => {
            let annotated = secret
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.get("kubernetes.io/service-account.name").is_some_and(|n| !n.is_empty()));
            if !annotated {
                errs.push(FieldError::required("metadata.annotations[kubernetes.io/service-account.name]", ""));
            }
        }
        "kubernetes.io/dockercfg" => require(errs, ".dockercfg"),
        "kubernetes.io/dockerconfigjson" => require(errs, ".dockerconfigjson"),
        "kubernetes.io/ssh-auth" => require(errs, "ssh-privatekey"),
        "kubernetes.io/tls" => {
            require(errs, "tls.crt");
            require(errs, "tls.key");
        }
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            errs.push(FieldError::required("data[username]", "one of data[username] or data[password] is required"));
        }
        _ => {}
    }
}

fn validate_pod(pod: &Pod, errs: &mut Vec<FieldError>) {
    let Some(spec) = pod.spec.as_ref() else {
        errs.push(FieldError::required("spec.containers", ""));
        return;
    };
    if spec.containers.is_empty() {
        errs.push(FieldError::required("spec.containers", ""));
    }
    let mut names = BTreeSet::new();
    for (i, container) in spec.containers.iter().enumerate() {
        let field = format!("spec.containers[{i}]");
        if container.name.is_empty() {
            errs.push(FieldError::required(format!("{field}.name"), ""));
        } else {
            push_all(errs, &format!("{field}.name"), &container.name, dns_label_errors(&container.name));
            if !names.insert(container.name.as_str()) {
                errs.push(FieldError {
                    field: format!("{field}.name"),
                    kind: FieldErrorKind::Duplicate(container.name.clone()),
                });
            }
        }
        if container.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
            errs.push(FieldError::required(format!("{field}.image"), ""));
        }
    }
    if let Some(policy) = spec.restart_policy.as_deref()
        && !["Always", "OnFailure", "Never"].contains(&policy)
    {
        errs.push(FieldError {
            field: "spec.restartPolicy".to_owned(),
            kind: FieldErrorKind::NotSupported {
                value: policy.to_owned(),
                supported: &["Always", "OnFailure", "Never"],
            },
        });
    }
    for (field, value) in [("spec.serviceAccountName", &spec.service_account_name), ("spec.nodeName", &spec.node_name)]
    {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            push_all(errs, field, value, dns_subdomain_errors(value));
        }
    }
}

/// What an update may not change, beyond what `validate` checks on the new object.
pub fn validate_update(new: &Object, old: &Object) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match (new, old) {
        (Object::Secret(new), Object::Secret(old)) => {
            let type_of = |s: &Secret| s.type_.clone().unwrap_or_else(|| "Opaque".to_owned());
            if type_of(new) != type_of(old) {
                errs.push(FieldError::invalid("type", type_of(new), IMMUTABLE));
            }
            if old.immutable == Some(true) {
                let detail = "field is immutable when `immutable` is set";
                if new.immutable != Some(true) {
                    errs.push(FieldError::forbidden("immutable", detail));
                }
                if new.data != old.data {
                    errs.push(FieldError::forbidden("data", detail));
                }
            }
        }
        (Object::Pod(new), Object::Pod(old))
            if mutable_spec_cleared(new.spec.as_ref()) != mutable_spec_cleared(old.spec.as_ref()) =>
        {
            errs.push(FieldError::forbidden(
                "spec",
                "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
            ));
        }
        _ => {}
    }
    errs
}

/// A pod spec with the fields an update may change blanked out, for comparison.
fn mutable_spec_cleared(spec: Option<&PodSpec>) -> Option<PodSpec> {
    let mut spec = spec.cloned()?;
    for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
        c.image = None;
    }
    spec.active_deadline_seconds = None;
    spec.tolerations = None;
    spec.termination_grace_period_seconds = None;
    Some(spec)
}
