//! The wire form of secrets: the one place values leave their zeroizing
//! containers. A reference's view of a version is encoded once, kept with the
//! version (`ViewMemo::wire`, zeroized with it) and shared by every read and
//! every subscriber of the change; the message it is encoded from is wiped at
//! once. The bytes copied from it then belong to HTTP/2.

use secrecy::ExposeSecret;
use vaultlet_client::SecretRef;
use vaultlet_client::codec::Wipe;
use vaultlet_client::encoded::{EncodedEvent, EncodedSecret};
use vaultlet_client::proto::{self, EventKind};

use crate::hub::{self, HubEvent};
use crate::secret::{ProjectionError, SecretId, SecretVersion, wire_format};

/// The wire form of what `r` sees of `version`, encoded once per version and reference.
pub fn encode_shared(id: &SecretId, r: &SecretRef, version: &SecretVersion) -> Result<EncodedSecret, ProjectionError> {
    let view = version.view(id, r);
    if let Some(wire) = view.wire.get() {
        return Ok(wire.clone());
    }
    let mut secret = encode(id, r, version)?;
    let wire = view.wire.get_or_init(|| EncodedEvent::encode_secret(&secret)).clone();
    secret.wipe();
    Ok(wire)
}

/// What `r` sees of `version`.
fn encode(id: &SecretId, r: &SecretRef, version: &SecretVersion) -> Result<proto::Secret, ProjectionError> {
    let view = version.project(id, r)?;
    Ok(proto::Secret {
        r#ref: Some(r.clone().into()),
        revision: version.revision.clone(),
        key_version: view.key_version,
        values: view.values.iter().map(|(k, v)| ((*k).to_owned(), v.expose_secret().to_owned())).collect(),
        raw: view.raw.map(<[u8]>::to_vec).unwrap_or_default(),
        format: wire_format(view.format) as i32,
    })
}

/// The wire form of a hub event. Its `Secret` is encoded once per version
/// and reference, then shared by every subscriber of the change.
pub fn encode_event(e: HubEvent, id: &SecretId, reference: &SecretRef) -> EncodedEvent {
    let only_ref = || {
        let secret = proto::Secret { r#ref: Some(reference.clone().into()), ..Default::default() };
        EncodedEvent::encode_secret(&secret)
    };
    let event = |kind: EventKind, secret, error: Option<hub::EventError>| EncodedEvent {
        kind: kind as i32,
        index: e.index,
        secret: Some(secret),
        error: error.map(error_to_proto),
    };
    let Some(version) = &e.version else { return event(e.kind, only_ref(), e.error) };
    match encode_shared(id, reference, version) {
        Ok(wire) => event(e.kind, wire, e.error),
        Err(p) => {
            let error = hub::EventError { code: p.code(), message: p.to_string(), revision: version.revision.clone() };
            event(EventKind::Error, only_ref(), Some(error))
        }
    }
}

fn error_to_proto(e: hub::EventError) -> proto::EventError {
    proto::EventError { code: e.code as i32, message: e.message, revision: e.revision }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prost::Message;

    use super::*;
    use crate::secret::tests::version;

    fn event(version: &Arc<SecretVersion>, reference: &str, index: u32) -> EncodedEvent {
        let e = HubEvent::new(EventKind::ContentChanged, index, Some(version.clone()));
        encode_event(e, &SecretId::new("default", "app"), &reference.parse().unwrap())
    }

    #[test]
    fn subscribers_of_one_change_share_one_encoding_per_reference() {
        let v = Arc::new(version("1", &[("k", 3, r#"{"a":"1","b":"2"}"#)]));
        let (one, two) = (event(&v, "app", 0), event(&v, "app", 5));
        assert!(Arc::ptr_eq(one.secret.as_ref().unwrap(), two.secret.as_ref().unwrap()));
        let decoded = proto::SecretEvent::decode(&two.encode_to_vec()[..]).unwrap();
        assert_eq!((decoded.index, decoded.secret.as_ref().unwrap().key_version), (5, 3));
        assert_eq!(decoded.secret.unwrap().values["b"], "2");

        let other = event(&v, "app:k", 0);
        assert!(!Arc::ptr_eq(one.secret.as_ref().unwrap(), other.secret.as_ref().unwrap()), "another reference");
        let weak = Arc::downgrade(one.secret.as_ref().unwrap());
        drop((one, two, v));
        assert!(weak.upgrade().is_none(), "the encoding goes (zeroized) with its version");
    }
}
