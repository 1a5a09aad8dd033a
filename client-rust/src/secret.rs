//! What the agent hands back, with values in zeroizing `secrecy` types.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::{SecretBox, SecretString};

use crate::{Error, SecretRef, proto};

/// Document format of a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Unspecified,
    Json,
    Yaml,
    Env,
    Raw,
}

impl From<i32> for Format {
    fn from(v: i32) -> Self {
        match proto::Format::try_from(v) {
            Ok(proto::Format::Json) => Format::Json,
            Ok(proto::Format::Yaml) => Format::Yaml,
            Ok(proto::Format::Env) => Format::Env,
            Ok(proto::Format::Raw) => Format::Raw,
            _ => Format::Unspecified,
        }
    }
}

/// One secret (or the part of it a reference selects) at one revision.
pub struct Secret {
    /// The reference as resolved by the agent (namespace filled in).
    pub reference: SecretRef,
    /// Opaque: compare for equality only.
    pub revision: String,
    /// Transit key version; 0 when the source is not encrypted.
    pub key_version: u32,
    pub values: BTreeMap<String, SecretString>,
    /// The plaintext document, when the reference names a single document.
    pub raw: Option<SecretBox<[u8]>>,
    pub format: Format,
}

// Never print values.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("reference", &self.reference.to_string())
            .field("revision", &self.revision)
            .field("key_version", &self.key_version)
            .field("fields", &self.values.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Secret {
    /// Takes the message apart, moving each value into a zeroizing container.
    pub(crate) fn from_proto(mut m: proto::Secret) -> Result<Self, Error> {
        let reference =
            m.r#ref.take().map(SecretRef::from).ok_or_else(|| Error::Protocol("secret without reference".into()))?;
        // Inserted in the order they come (the map's, sorted): `collect` would
        // gather them in a vector and sort it first, an allocation and about
        // 300 instructions more for each event a watch receives.
        let mut values = BTreeMap::new();
        for (k, v) in std::mem::take(&mut m.values) {
            values.insert(k, SecretString::from(v));
        }
        let raw = (!m.raw.is_empty()).then(|| SecretBox::new(std::mem::take(&mut m.raw).into_boxed_slice()));
        Ok(Secret { reference, revision: m.revision, key_version: m.key_version, values, raw, format: m.format.into() })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Snapshot,
    ContentChanged,
    Recrypted,
    Deleted,
    Error,
    /// A kind this client does not know (a newer agent).
    Unknown(i32),
}

impl From<i32> for EventKind {
    fn from(v: i32) -> Self {
        match proto::EventKind::try_from(v) {
            Ok(proto::EventKind::Snapshot) => EventKind::Snapshot,
            Ok(proto::EventKind::ContentChanged) => EventKind::ContentChanged,
            Ok(proto::EventKind::Recrypted) => EventKind::Recrypted,
            Ok(proto::EventKind::Deleted) => EventKind::Deleted,
            Ok(proto::EventKind::Error) => EventKind::Error,
            _ => EventKind::Unknown(v),
        }
    }
}

impl EventKind {
    /// The wire name without prefix: `SNAPSHOT`, `CONTENT_CHANGED`, ...
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::Snapshot => "SNAPSHOT",
            EventKind::ContentChanged => "CONTENT_CHANGED",
            EventKind::Recrypted => "RECRYPTED",
            EventKind::Deleted => "DELETED",
            EventKind::Error => "ERROR",
            EventKind::Unknown(_) => "UNKNOWN",
        }
    }
}

/// Why the newest version of a secret could not be served.
#[derive(Clone, Debug)]
pub struct EventError {
    pub code: tonic::Code,
    pub message: String,
    /// The revision that failed; `Event::secret` keeps the last good one.
    pub revision: String,
}

/// One event of a watch.
#[derive(Debug)]
pub struct Event {
    pub kind: EventKind,
    /// Index of the reference in the list given to `watch`.
    pub index: usize,
    pub secret: Secret,
    pub error: Option<EventError>,
}

impl From<proto::EventError> for EventError {
    fn from(e: proto::EventError) -> Self {
        EventError { code: tonic::Code::from(e.code), message: e.message, revision: e.revision }
    }
}
