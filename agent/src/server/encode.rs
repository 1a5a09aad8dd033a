//! The wire form of secrets: the one place values leave their zeroizing
//! containers. The messages built here are wiped once encoded (see
//! `vaultlet_client::codec`); the encoded bytes then belong to HTTP/2. A watch
//! event's encoding is kept with its version (`ViewMemo::wire`, zeroized with
//! it) and shared by the subscribers of the change.

use secrecy::ExposeSecret;
use vaultlet_client::SecretRef;
use vaultlet_client::codec::Wipe;
use vaultlet_client::encoded::EncodedEvent;
use vaultlet_client::proto::{self, EventKind};

use crate::hub::{self, HubEvent};
use crate::secret::{ProjectionError, SecretId, SecretVersion, wire_format};

/// What `r` sees of `version`.
pub fn encode(id: &SecretId, r: &SecretRef, version: &SecretVersion) -> Result<proto::Secret, ProjectionError> {
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
    let view = version.view(id, reference);
    if let Some(wire) = view.wire.get() {
        return event(e.kind, wire.clone(), e.error);
    }
    match encode(id, reference, version) {
        Ok(mut secret) => {
            let wire = view.wire.get_or_init(|| EncodedEvent::encode_secret(&secret)).clone();
            secret.wipe();
            event(e.kind, wire, e.error)
        }
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
