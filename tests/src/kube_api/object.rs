//! The kinds this server stores, and one enum over their k8s-openapi types so that a
//! single store, history and watch can carry all of them.

use k8s_openapi::Resource;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::Value;

use super::error::{ApiError, GroupResource};

/// A stored kind (all in the core `v1` group).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Node,
    ServiceAccount,
    Secret,
    Pod,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Namespace, Kind::Node, Kind::ServiceAccount, Kind::Secret, Kind::Pod];

    /// The URL segment, e.g. `secrets`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => Namespace::URL_PATH_SEGMENT,
            Kind::Node => Node::URL_PATH_SEGMENT,
            Kind::ServiceAccount => ServiceAccount::URL_PATH_SEGMENT,
            Kind::Secret => Secret::URL_PATH_SEGMENT,
            Kind::Pod => Pod::URL_PATH_SEGMENT,
        }
    }

    /// The `kind` field, e.g. `Secret`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => Namespace::KIND,
            Kind::Node => Node::KIND,
            Kind::ServiceAccount => ServiceAccount::KIND,
            Kind::Secret => Secret::KIND,
            Kind::Pod => Pod::KIND,
        }
    }

    pub fn from_plural(plural: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.plural() == plural)
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node)
    }

    pub fn group_resource(self) -> GroupResource {
        GroupResource { group: "", resource: self.plural() }
    }

    pub fn not_found(self, name: &str) -> ApiError {
        ApiError::NotFound { resource: self.group_resource(), name: name.to_owned() }
    }

    /// An object of this kind that carries nothing but a resourceVersion: the body of a
    /// watch BOOKMARK, which clients decode as that kind.
    pub fn bookmark(self, resource_version: u64) -> Object {
        let metadata = ObjectMeta { resource_version: Some(resource_version.to_string()), ..Default::default() };
        match self {
            Kind::Namespace => Object::Namespace(Namespace { metadata, ..Default::default() }),
            Kind::Node => Object::Node(Node { metadata, ..Default::default() }),
            Kind::ServiceAccount => Object::ServiceAccount(ServiceAccount { metadata, ..Default::default() }),
            Kind::Secret => Object::Secret(Secret { metadata, ..Default::default() }),
            Kind::Pod => Object::Pod(Pod { metadata, ..Default::default() }),
        }
    }
}

/// One stored object, typed.
#[derive(Clone, Debug, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "objects sit in the store's map and are cloned whole anyway; boxing would only add indirection"
)]
pub enum Object {
    Namespace(Namespace),
    Node(Node),
    ServiceAccount(ServiceAccount),
    Secret(Secret),
    Pod(Pod),
}

/// Runs `$body` with `$o` bound to the typed object inside, whatever its kind.
macro_rules! each {
    ($obj:expr, $o:ident => $body:expr) => {
        match $obj {
            Object::Namespace($o) => $body,
            Object::Node($o) => $body,
            Object::ServiceAccount($o) => $body,
            Object::Secret($o) => $body,
            Object::Pod($o) => $body,
        }
    };
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Node(_) => Kind::Node,
            Object::ServiceAccount(_) => Kind::ServiceAccount,
            Object::Secret(_) => Kind::Secret,
            Object::Pod(_) => Kind::Pod,
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        each!(self, o => &o.metadata)
    }

    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        each!(self, o => &mut o.metadata)
    }

    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        self.meta().namespace.as_deref().unwrap_or_default()
    }

    pub fn uid(&self) -> &str {
        self.meta().uid.as_deref().unwrap_or_default()
    }

    pub fn to_value(&self) -> Value {
        // Serializing k8s-openapi types into a Value cannot fail: no maps with non-string keys.
        each!(self, o => serde_json::to_value(o)).unwrap_or(Value::Null)
    }

    /// Decodes a request body (already parsed as JSON) as `kind`, answering as the
    /// apiserver does when the body names another kind or does not fit the schema.
    pub fn from_value(kind: Kind, value: Value) -> Result<Object, ApiError> {
        check_type_meta("v1", kind.name(), &value)?;
        let cannot = |e: serde_json::Error| {
            let k = kind.name();
            ApiError::BadRequest(format!("{k} in version \"v1\" cannot be handled as a {k}: {e}"))
        };
        Ok(match kind {
            Kind::Namespace => Object::Namespace(serde_json::from_value(value).map_err(cannot)?),
            Kind::Node => Object::Node(serde_json::from_value(value).map_err(cannot)?),
            Kind::ServiceAccount => Object::ServiceAccount(serde_json::from_value(value).map_err(cannot)?),
            Kind::Secret => Object::Secret(serde_json::from_value(value).map_err(cannot)?),
            Kind::Pod => Object::Pod(serde_json::from_value(value).map_err(cannot)?),
        })
    }

    /// The value of a field selector's field, or None if the kind does not index it.
    pub fn field(&self, field: &str) -> Option<String> {
        match field {
            "metadata.name" => return Some(self.name().to_owned()),
            "metadata.namespace" => return Some(self.namespace().to_owned()),
            _ => {}
        }
        let text = |s: Option<&String>| s.cloned().unwrap_or_default();
        match self {
            Object::Secret(s) => (field == "type").then(|| text(s.type_.as_ref())),
            Object::Namespace(n) => {
                (field == "status.phase").then(|| text(n.status.as_ref().and_then(|s| s.phase.as_ref())))
            }
            Object::Node(n) => (field == "spec.unschedulable")
                .then(|| n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false).to_string()),
            Object::Pod(p) => {
                let spec = p.spec.as_ref();
                let status = p.status.as_ref();
                match field {
                    "spec.nodeName" => Some(text(spec.and_then(|s| s.node_name.as_ref()))),
                    "spec.serviceAccountName" => Some(text(spec.and_then(|s| s.service_account_name.as_ref()))),
                    "spec.restartPolicy" => Some(text(spec.and_then(|s| s.restart_policy.as_ref()))),
                    "spec.schedulerName" => Some(text(spec.and_then(|s| s.scheduler_name.as_ref()))),
                    "spec.hostNetwork" => Some(spec.and_then(|s| s.host_network).unwrap_or(false).to_string()),
                    "status.phase" => Some(text(status.and_then(|s| s.phase.as_ref()))),
                    "status.podIP" => Some(text(status.and_then(|s| s.pod_ip.as_ref()))),
                    "status.nominatedNodeName" => Some(text(status.and_then(|s| s.nominated_node_name.as_ref()))),
                    _ => None,
                }
            }
            Object::ServiceAccount(_) => None,
        }
    }

    /// Whether `field` can be used in a field selector on this kind.
    pub fn supports_field(kind: Kind, field: &str) -> bool {
        kind.bookmark(0).field(field).is_some()
    }
}

impl Serialize for Object {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        each!(self, o => o.serialize(serializer))
    }
}

/// A body may omit `apiVersion` and `kind` (the URL says which), but must not name others.
pub fn check_type_meta(api_version: &str, kind: &str, value: &Value) -> Result<(), ApiError> {
    let Some(map) = value.as_object() else {
        return Err(ApiError::BadRequest(format!(
            "{kind} in version {api_version:?} cannot be handled as a {kind}: the body is not a JSON object"
        )));
    };
    if let Some(v) = map.get("apiVersion").and_then(Value::as_str).filter(|v| !v.is_empty() && *v != api_version) {
        return Err(ApiError::BadRequest(format!(
            "the API version in the data ({v}) does not match the expected API version ({api_version})"
        )));
    }
    if let Some(k) = map.get("kind").and_then(Value::as_str).filter(|k| !k.is_empty() && *k != kind) {
        return Err(ApiError::BadRequest(format!(
            "the kind in the data ({k}) does not match the expected kind ({kind})"
        )));
    }
    Ok(())
}

/// A k8s-openapi type this server stores: lets the library API be generic
/// (`server.get::<Secret>(..)`) over the same store the HTTP API uses.
pub trait Stored: Resource + Clone + Sized {
    const STORED_KIND: Kind;
    fn into_object(self) -> Object;
    fn from_object(object: Object) -> Option<Self>;
}

macro_rules! stored {
    ($ty:ident) => {
        impl Stored for $ty {
            const STORED_KIND: Kind = Kind::$ty;
            fn into_object(self) -> Object {
                Object::$ty(self)
            }
            fn from_object(object: Object) -> Option<Self> {
                match object {
                    Object::$ty(o) => Some(o),
                    _ => None,
                }
            }
        }
    };
}

stored!(Namespace);
stored!(Node);
stored!(ServiceAccount);
stored!(Secret);
stored!(Pod);
