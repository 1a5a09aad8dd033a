//! The REST verbs on stored kinds: get, list, create, update, patch, delete, with the
//! apiserver's checks in its order: decode, identity against the URL, preconditions,
//! strategy, admission, validation, then the store.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ListMeta, ObjectMeta};
use serde::Serialize;
use serde_json::Value;

use super::error::{ApiError, FieldError, FieldErrorKind};
use super::ids;
use super::object::{Kind, Object};
use super::patch::{self, PatchType};
use super::selector::{FieldSelector, Filter, LabelSelector};
use super::state::State;
use super::strategy;
use super::validation;

/// A list response: `{kind: SecretList, apiVersion: v1, metadata: {resourceVersion}, items}`.
#[derive(Serialize)]
pub struct ListBody {
    kind: String,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    metadata: ListMeta,
    items: Vec<Object>,
}

/// The list/watch filter of a request's `labelSelector` and `fieldSelector`.
pub fn filter(
    kind: Kind,
    namespace: Option<&str>,
    label: Option<&str>,
    field: Option<&str>,
) -> Result<Filter, ApiError> {
    Ok(Filter {
        namespace: namespace.map(str::to_owned),
        labels: LabelSelector::parse(label.unwrap_or_default())?,
        fields: FieldSelector::parse(kind, field.unwrap_or_default())?,
    })
}

pub fn get(state: &State, kind: Kind, namespace: &str, name: &str) -> Result<Object, ApiError> {
    state.store.get(kind, namespace, name).ok_or_else(|| kind.not_found(name))
}

/// Lists at the latest version: that satisfies every `resourceVersion`/`resourceVersionMatch`
/// a client may send except an exact old version (which etcd may still have but this
/// store does not) or a version from the future.
pub fn list(
    state: &State,
    kind: Kind,
    filter: &Filter,
    version: Option<u64>,
    exact: bool,
) -> Result<ListBody, ApiError> {
    let (items, current) = state.store.list(kind, filter);
    match version {
        Some(v) if v > current => return Err(ApiError::TooLargeResourceVersion { requested: v, current }),
        Some(v) if exact && v != current => return Err(ApiError::Expired { requested: v, oldest: current }),
        _ => {}
    }
    Ok(ListBody {
        kind: format!("{}List", kind.name()),
        api_version: "v1",
        metadata: ListMeta { resource_version: Some(current.to_string()), ..Default::default() },
        items,
    })
}

/// Checks a decoded object against the URL it was sent to, filling in the namespace.
fn check_identity(object: &mut Object, kind: Kind, namespace: &str, name: Option<&str>) -> Result<(), ApiError> {
    if kind.namespaced() {
        match object.namespace() {
            "" => object.meta_mut().namespace = Some(namespace.to_owned()),
            ns if ns != namespace => {
                return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".to_owned(),
                ));
            }
            _ => {}
        }
    } else {
        // Cluster-scoped objects have no namespace, whatever the body says.
        object.meta_mut().namespace = None;
    }
    if let Some(name) = name
        && object.name() != name
    {
        return Err(ApiError::BadRequest(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            object.name()
        )));
    }
    Ok(())
}

fn invalid(object: &Object, causes: Vec<FieldError>) -> Result<(), ApiError> {
    if causes.is_empty() {
        return Ok(());
    }
    Err(ApiError::Invalid { kind: object.kind().name(), group: "", name: object.name().to_owned(), causes })
}

pub fn create(state: &State, kind: Kind, namespace: &str, body: Value, dry_run: bool) -> Result<Object, ApiError> {
    let mut object = Object::from_value(kind, body)?;
    check_identity(&mut object, kind, namespace, None)?;
    create_object(state, object, dry_run)
}

/// Creates a decoded object, from a request or from the library API.
pub fn create_object(state: &State, mut object: Object, dry_run: bool) -> Result<Object, ApiError> {
    if object.name().is_empty()
        && let Some(prefix) = object.meta().generate_name.clone().filter(|p| !p.is_empty())
    {
        object.meta_mut().name = Some(format!("{prefix}{}", ids::name_suffix()));
    }
    strategy::prepare_create(&mut object);
    strategy::admit_create(&state.store, &object)?;
    invalid(&object, validation::validate(&object))?;
    if object.meta().resource_version.as_deref().is_some_and(|v| !v.is_empty()) {
        // Where etcd3's storage layer refuses it, with the same words and code.
        return Err(ApiError::Internal("resourceVersion should not be set on objects to be created".to_owned()));
    }
    let created = state.store.create(object, dry_run)?;
    if let Object::Namespace(_) = &created
        && !dry_run
    {
        // The serviceaccounts controller gives every namespace its `default` account.
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some("default".to_owned()),
                namespace: Some(created.name().to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        state.store.create(Object::ServiceAccount(sa), false)?;
    }
    Ok(created)
}

/// The checks of an update, given the stored object: preconditions, strategy, validation.
fn updated(mut new: Object, old: &Object) -> Result<Object, ApiError> {
    let conflict = |detail: String| ApiError::Conflict {
        resource: old.kind().group_resource(),
        name: old.name().to_owned(),
        detail,
    };
    // An empty resourceVersion is an unconditional update, which the core kinds allow.
    if let Some(v) = new.meta().resource_version.as_deref().filter(|v| !v.is_empty())
        && Some(v) != old.meta().resource_version.as_deref()
    {
        return Err(conflict(
            "the object has been modified; please apply your changes to the latest version and try again".to_owned(),
        ));
    }
    if let Some(uid) = new.meta().uid.as_deref().filter(|u| !u.is_empty())
        && uid != old.uid()
    {
        return Err(conflict(format!(
            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
            old.uid()
        )));
    }
    strategy::prepare_update(&mut new, old);
    let mut causes = validation::validate(&new);
    causes.extend(validation::validate_update(&new, old));
    invalid(&new, causes)?;
    Ok(new)
}

pub fn update(
    state: &State,
    kind: Kind,
    namespace: &str,
    name: &str,
    body: Value,
    dry_run: bool,
) -> Result<Object, ApiError> {
    let mut object = Object::from_value(kind, body)?;
    check_identity(&mut object, kind, namespace, Some(name))?;
    state.store.update(kind, namespace, name, dry_run, |old| updated(object, old))
}

/// Replaces a decoded object, from the library API.
pub fn replace_object(state: &State, object: Object) -> Result<Object, ApiError> {
    let (kind, namespace, name) = (object.kind(), object.namespace().to_owned(), object.name().to_owned());
    state.store.update(kind, &namespace, &name, false, |old| updated(object, old))
}

pub fn patch(
    state: &State,
    kind: Kind,
    namespace: &str,
    name: &str,
    patch_type: PatchType,
    body: &[u8],
    dry_run: bool,
) -> Result<Object, ApiError> {
    state.store.update(kind, namespace, name, dry_run, |old| {
        let patched = patch::apply(old.to_value(), body, patch_type)?;
        let mut object = Object::from_value(kind, patched)?;
        check_identity(&mut object, kind, namespace, Some(name))?;
        updated(object, old)
    })
}

const PROPAGATION_POLICIES: &[&str] = &["Foreground", "Background", "Orphan"];

pub fn delete(
    state: &State,
    kind: Kind,
    namespace: &str,
    name: &str,
    options: &DeleteOptions,
    dry_run: bool,
) -> Result<Object, ApiError> {
    if let Some(policy) = options.propagation_policy.as_deref()
        && !PROPAGATION_POLICIES.contains(&policy)
    {
        return Err(ApiError::Invalid {
            kind: "DeleteOptions",
            group: "meta.k8s.io",
            name: String::new(),
            causes: vec![FieldError {
                field: "propagationPolicy".to_owned(),
                kind: FieldErrorKind::NotSupported { value: policy.to_owned(), supported: PROPAGATION_POLICIES },
            }],
        });
    }
    let preconditions = options.preconditions.clone().unwrap_or_default();
    state.store.delete(kind, namespace, name, dry_run, |existing| {
        let failed = |what: &str, wanted: &str, actual: &str| ApiError::Conflict {
            resource: kind.group_resource(),
            name: name.to_owned(),
            detail: format!("Precondition failed: {what} in precondition: {wanted}, {what} in object meta: {actual}"),
        };
        if let Some(uid) = preconditions.uid.as_deref()
            && uid != existing.uid()
        {
            return Err(failed("UID", uid, existing.uid()));
        }
        let actual_version = existing.meta().resource_version.as_deref().unwrap_or_default();
        if let Some(version) = preconditions.resource_version.as_deref()
            && version != actual_version
        {
            return Err(failed("ResourceVersion", version, actual_version));
        }
        Ok(())
    })
}
