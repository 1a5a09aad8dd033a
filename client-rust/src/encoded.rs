//! The agent's forms of a `SecretEvent` and a `GetSecretsResponse`: their
//! `Secret`s already encoded, shared by every subscriber of a change and every
//! read of a version. One encoding then serves them all: each copies bytes
//! into its stream, where it would have built, encoded and wiped a message of
//! its own. On the wire they are the generated messages: an embedded message is
//! a length-delimited field, exactly as bytes are (checked below).

use std::sync::Arc;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};
use secrecy::zeroize::Zeroizing;

use crate::codec::Wipe;
use crate::proto;

/// `Message::merge_field` of a form the agent only sends: nothing decodes it.
macro_rules! send_only {
    () => {
        fn merge_field(
            &mut self,
            tag: u32,
            wire_type: WireType,
            buf: &mut impl Buf,
            ctx: DecodeContext,
        ) -> Result<(), DecodeError> {
            encoding::skip_field(wire_type, tag, buf, ctx)
        }
    };
}

/// An encoded `Secret`, values included: zeroized when its last holder drops it.
pub type EncodedSecret = Arc<Zeroizing<Vec<u8>>>;

#[derive(Debug, Default, Clone)]
pub struct EncodedEvent {
    /// A `proto::EventKind`.
    pub kind: i32,
    pub index: u32,
    pub secret: Option<EncodedSecret>,
    pub error: Option<proto::EventError>,
}

impl EncodedEvent {
    /// `secret` as the wire's nested message.
    pub fn encode_secret(secret: &proto::Secret) -> EncodedSecret {
        let mut bytes = Zeroizing::new(Vec::with_capacity(secret.encoded_len()));
        secret.encode_raw(&mut *bytes);
        Arc::new(bytes)
    }
}

impl Message for EncodedEvent {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if self.kind != 0 {
            encoding::int32::encode(1, &self.kind, buf);
        }
        if self.index != 0 {
            encoding::uint32::encode(2, &self.index, buf);
        }
        if let Some(secret) = &self.secret {
            encoding::bytes::encode(3, &**secret as &Vec<u8>, buf);
        }
        if let Some(error) = &self.error {
            encoding::message::encode(4, error, buf);
        }
    }

    send_only!();

    fn encoded_len(&self) -> usize {
        let kind = if self.kind != 0 { encoding::int32::encoded_len(1, &self.kind) } else { 0 };
        let index = if self.index != 0 { encoding::uint32::encoded_len(2, &self.index) } else { 0 };
        let secret = self.secret.as_ref().map_or(0, |s| encoding::bytes::encoded_len(3, &**s as &Vec<u8>));
        let error = self.error.as_ref().map_or(0, |e| encoding::message::encoded_len(4, e));
        kind + index + secret + error
    }

    fn clear(&mut self) {
        *self = EncodedEvent::default();
    }
}

/// Holds no value of its own: the shared encoding is zeroized with its last holder.
impl Wipe for EncodedEvent {}

/// A `GetSecretsResponse` of encoded `Secret`s.
#[derive(Debug, Default, Clone)]
pub struct EncodedSecrets {
    pub secrets: Vec<EncodedSecret>,
}

impl Message for EncodedSecrets {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for secret in &self.secrets {
            encoding::bytes::encode(1, &**secret as &Vec<u8>, buf);
        }
    }

    send_only!();

    fn encoded_len(&self) -> usize {
        self.secrets.iter().map(|s| encoding::bytes::encoded_len(1, &**s as &Vec<u8>)).sum()
    }

    fn clear(&mut self) {
        self.secrets.clear();
    }
}

/// Holds no value of its own, as `EncodedEvent`.
impl Wipe for EncodedSecrets {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_event_is_a_secret_event_on_the_wire() {
        let secret = proto::Secret {
            r#ref: Some(proto::SecretRef { namespace: "default".into(), name: "app".into(), ..Default::default() }),
            revision: "7".into(),
            key_version: 3,
            values: [("password".to_owned(), "hunter2".to_owned())].into(),
            raw: b"{\"password\":\"hunter2\"}".to_vec(),
            format: proto::Format::Json as i32,
        };
        let error = proto::EventError { code: 9, message: "bad".into(), revision: "8".into() };
        for (kind, index, with_secret, error) in [
            (proto::EventKind::Snapshot, 0, true, None),
            (proto::EventKind::Error, 4, true, Some(error)),
            (proto::EventKind::Deleted, 1, false, None),
        ] {
            let expected = proto::SecretEvent {
                kind: kind as i32,
                index,
                secret: with_secret.then(|| secret.clone()),
                error: error.clone(),
            };
            let encoded = EncodedEvent {
                kind: kind as i32,
                index,
                secret: with_secret.then(|| EncodedEvent::encode_secret(&secret)),
                error,
            };
            let bytes = encoded.encode_to_vec();
            assert_eq!(bytes.len(), encoded.encoded_len());
            assert_eq!(bytes, expected.encode_to_vec());
            assert_eq!(proto::SecretEvent::decode(&bytes[..]).unwrap(), expected);
        }
    }

    #[test]
    fn encoded_secrets_are_a_get_secrets_response_on_the_wire() {
        let secret = |name: &str, value: &str| proto::Secret {
            r#ref: Some(proto::SecretRef { namespace: "default".into(), name: name.into(), ..Default::default() }),
            revision: "7".into(),
            values: [("password".to_owned(), value.to_owned())].into(),
            ..Default::default()
        };
        for secrets in [vec![], vec![secret("a", "1")], vec![secret("a", "1"), secret("b", "2")]] {
            let expected = proto::GetSecretsResponse { secrets: secrets.clone() };
            let encoded = EncodedSecrets { secrets: secrets.iter().map(EncodedEvent::encode_secret).collect() };
            let bytes = encoded.encode_to_vec();
            assert_eq!(bytes.len(), encoded.encoded_len());
            assert_eq!(bytes, expected.encode_to_vec());
            assert_eq!(proto::GetSecretsResponse::decode(&bytes[..]).unwrap(), expected);
        }
    }
}
