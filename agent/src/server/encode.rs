//! The wire form of secrets: the one place values leave their zeroizing
//! containers. The messages built here are wiped once encoded (see
//! `vaultlet_client::codec`); the encoded bytes then belong to HTTP/2.

use secrecy::ExposeSecret;
use vaultlet_client::SecretRef;
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

pub fn encode_event(e: HubEvent) -> proto::SecretEvent {
    let only_ref = || proto::Secret { r#ref: Some((*e.reference).clone().into()), ..Default::default() };
    let (secret, error) = match &e.version {
        Some(v) => match encode(&e.id, &e.reference, v) {
            Ok(s) => (s, e.error),
            Err(p) => {
                let error = hub::EventError { code: p.code(), message: p.to_string(), revision: v.revision.clone() };
                return proto::SecretEvent {
                    kind: EventKind::Error as i32,
                    index: e.index,
                    secret: Some(only_ref()),
                    error: Some(error_to_proto(error)),
                };
            }
        },
        None => (only_ref(), e.error),
    };
    proto::SecretEvent { kind: e.kind as i32, index: e.index, secret: Some(secret), error: error.map(error_to_proto) }
}

fn error_to_proto(e: hub::EventError) -> proto::EventError {
    proto::EventError { code: e.code as i32, message: e.message, revision: e.revision }
}
