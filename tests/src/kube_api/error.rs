//! Errors as the Kubernetes API reports them: an HTTP code plus a `Status` object whose
//! `reason` and `details` clients branch on (kube-rs matches `code`, kubectl prints
//! `message`), so each variant carries what a real apiserver would put there.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, StatusCause, StatusDetails};

/// A resource as named in error messages: `secrets`, or `tokenreviews.authentication.k8s.io`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupResource {
    pub group: &'static str,
    pub resource: &'static str,
}

impl fmt::Display for GroupResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() { f.write_str(self.resource) } else { write!(f, "{}.{}", self.resource, self.group) }
    }
}

/// One field-level validation failure (`field.Error` in the apiserver).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub kind: FieldErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldErrorKind {
    Required(String),
    Invalid { value: String, detail: String },
    Forbidden(String),
    Duplicate(String),
    TooLong(usize),
    NotSupported { value: String, supported: &'static [&'static str] },
}

impl FieldError {
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { field: field.into(), kind: FieldErrorKind::Required(detail.into()) }
    }

    pub fn invalid(field: impl Into<String>, value: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { field: field.into(), kind: FieldErrorKind::Invalid { value: value.into(), detail: detail.into() } }
    }

    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { field: field.into(), kind: FieldErrorKind::Forbidden(detail.into()) }
    }

    fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Required(_) => "FieldValueRequired",
            FieldErrorKind::Invalid { .. } => "FieldValueInvalid",
            FieldErrorKind::Forbidden(_) => "FieldValueForbidden",
            FieldErrorKind::Duplicate(_) => "FieldValueDuplicate",
            FieldErrorKind::TooLong(_) => "FieldValueTooLong",
            FieldErrorKind::NotSupported { .. } => "FieldValueNotSupported",
        }
    }

    /// The message without the field path: what a `StatusCause` carries.
    fn message(&self) -> String {
        match &self.kind {
            FieldErrorKind::Required(detail) if detail.is_empty() => "Required value".to_owned(),
            FieldErrorKind::Required(detail) => format!("Required value: {detail}"),
            FieldErrorKind::Invalid { value, detail } => format!("Invalid value: {value:?}: {detail}"),
            FieldErrorKind::Forbidden(detail) => format!("Forbidden: {detail}"),
            FieldErrorKind::Duplicate(value) => format!("Duplicate value: {value:?}"),
            FieldErrorKind::TooLong(max) => format!("Too long: may not be more than {max} bytes"),
            FieldErrorKind::NotSupported { value, supported } => {
                let quoted: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
                format!("Unsupported value: {value:?}: supported values: {}", quoted.join(", "))
            }
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message())
    }
}

/// Joins field errors the way the apiserver's aggregate does: one bare, several in brackets.
fn join_causes(causes: &[FieldError]) -> String {
    match causes {
        [one] => one.to_string(),
        many => format!("[{}]", many.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
    }
}

/// Every failure a request can meet, one variant per Kubernetes `StatusReason` we use.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{resource} \"{name}\" not found")]
    NotFound { resource: GroupResource, name: String },
    #[error("the server could not find the requested resource")]
    PathNotFound,
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists { resource: GroupResource, name: String },
    #[error("Operation cannot be fulfilled on {resource} \"{name}\": {detail}")]
    Conflict { resource: GroupResource, name: String, detail: String },
    #[error("{kind} \"{name}\" is invalid: {}", join_causes(causes))]
    Invalid { kind: &'static str, group: &'static str, name: String, causes: Vec<FieldError> },
    #[error("{0}")]
    BadRequest(String),
    /// A JSON patch that parses but cannot be applied (a failed `test`, a missing path).
    #[error("{0}")]
    UnprocessablePatch(String),
    #[error("the body of the request was in an unknown format - accepted media types include: {0}")]
    UnsupportedMediaType(&'static str),
    #[error("only the following media types are accepted: application/json")]
    NotAcceptable,
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("Request entity too large: limit is {0}")]
    TooLarge(usize),
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    /// `too old resource version`: the history no longer reaches back that far.
    #[error("too old resource version: {requested} ({oldest})")]
    Expired { requested: u64, oldest: u64 },
    #[error("Too large resource version: {requested}, current: {current}")]
    TooLargeResourceVersion { requested: u64, current: u64 },
    #[error("Internal error occurred: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Unauthorized => 401,
            Self::Forbidden(_) => 403,
            Self::NotFound { .. } | Self::PathNotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::NotAcceptable => 406,
            Self::AlreadyExists { .. } | Self::Conflict { .. } => 409,
            Self::Expired { .. } => 410,
            Self::TooLarge(_) => 413,
            Self::UnsupportedMediaType(_) => 415,
            Self::Invalid { .. } | Self::UnprocessablePatch(_) => 422,
            Self::Internal(_) => 500,
            Self::TooLargeResourceVersion { .. } => 504,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "BadRequest",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden(_) => "Forbidden",
            Self::NotFound { .. } | Self::PathNotFound => "NotFound",
            Self::MethodNotAllowed => "MethodNotAllowed",
            Self::NotAcceptable => "NotAcceptable",
            Self::AlreadyExists { .. } => "AlreadyExists",
            Self::Conflict { .. } => "Conflict",
            Self::Expired { .. } => "Expired",
            Self::TooLarge(_) => "RequestEntityTooLarge",
            Self::UnsupportedMediaType(_) => "UnsupportedMediaType",
            Self::Invalid { .. } | Self::UnprocessablePatch(_) => "Invalid",
            Self::Internal(_) => "InternalError",
            Self::TooLargeResourceVersion { .. } => "Timeout",
        }
    }

    fn details(&self) -> Option<StatusDetails> {
        let named = |resource: &GroupResource, name: &str| StatusDetails {
            name: Some(name.to_owned()),
            group: (!resource.group.is_empty()).then(|| resource.group.to_owned()),
            kind: Some(resource.resource.to_owned()),
            ..Default::default()
        };
        match self {
            Self::NotFound { resource, name }
            | Self::AlreadyExists { resource, name }
            | Self::Conflict { resource, name, .. } => Some(named(resource, name)),
            Self::Invalid { kind, group, name, causes } => Some(StatusDetails {
                name: Some(name.clone()),
                group: (!group.is_empty()).then(|| (*group).to_owned()),
                kind: Some((*kind).to_owned()),
                causes: Some(
                    causes
                        .iter()
                        .map(|c| StatusCause {
                            field: Some(c.field.clone()),
                            message: Some(c.message()),
                            reason: Some(c.reason().to_owned()),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            // Clients back off by this hint before retrying (a real apiserver sends it too).
            Self::TooLargeResourceVersion { .. } => Some(StatusDetails {
                causes: Some(vec![StatusCause {
                    reason: Some("ResourceVersionTooLarge".to_owned()),
                    message: Some("Too large resource version".to_owned()),
                    field: None,
                }]),
                retry_after_seconds: Some(1),
                ..Default::default()
            }),
            _ => None,
        }
    }

    /// The `Status` body that goes with the HTTP code.
    pub fn to_status(&self) -> Status {
        Status {
            status: Some("Failure".to_owned()),
            message: Some(self.to_string()),
            reason: Some(self.reason().to_owned()),
            details: self.details(),
            code: Some(i32::from(self.code())),
            metadata: Default::default(),
        }
    }
}
