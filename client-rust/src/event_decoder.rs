//! A watch event decoded straight into the client's `Event`: each value into
//! its zeroizing container and its map, each string in one allocation of its
//! size. Decoded as prost's generated `SecretEvent` first, the values went
//! into a map of their own that `Event` then rebuilt, and each string grew
//! from empty: 2,170 of the 12,330 instructions an event cost a pod
//! (callgrind, `vaultlet-bench --only instructions`).
//!
//! prost still decodes what holds no value (the reference, the error), skips
//! unknown fields and reads every key, varint and scalar; this walks the
//! fields of the event, its secret and the values' map entries as the
//! generated code does, merges included (the tests compare the two).

use std::collections::BTreeMap;

use prost::bytes::Buf;
use prost::encoding::{self, DecodeContext, WireType};
use secrecy::{SecretBox, SecretString};
use tonic::Status;
use tonic::codec::{DecodeBuf, Decoder};

use crate::{Error, Event, Secret, proto};

/// A watch event as it came: an `Event`, or what the agent left out of it.
pub type Received = Result<Event, Error>;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    Prost(#[from] prost::DecodeError),
    #[error("field {0} runs past the end of its message")]
    Truncated(u32),
    #[error("field {0} is not valid UTF-8")]
    NotUtf8(u32),
}

#[derive(Debug, Default)]
pub struct EventDecoder;

impl Decoder for EventDecoder {
    type Item = Received;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Received>, Status> {
        // tonic gathers each message into one buffer: it is one slice.
        let whole = buf.remaining();
        let message = buf.chunk();
        let decoded = if message.len() == whole {
            decode(message).map_err(|e| Status::internal(e.to_string()))
        } else {
            Err(Status::internal("a watch event arrived in pieces"))
        };
        buf.advance(whole);
        decoded.map(Some)
    }
}

/// A `SecretEvent`.
fn decode(mut buf: &[u8]) -> Result<Received, WireError> {
    let ctx = DecodeContext::default();
    let (mut kind, mut index) = (0i32, 0u32);
    let mut secret: Option<SecretFields> = None;
    let mut error: Option<proto::EventError> = None;
    while buf.has_remaining() {
        let (tag, wire_type) = encoding::decode_key(&mut buf)?;
        match tag {
            1 => encoding::int32::merge(wire_type, &mut kind, &mut buf, ctx.clone())?,
            2 => encoding::uint32::merge(wire_type, &mut index, &mut buf, ctx.clone())?,
            3 => secret.get_or_insert_default().merge(delimited(tag, wire_type, &mut buf)?, &ctx)?,
            4 => encoding::message::merge(wire_type, error.get_or_insert_default(), &mut buf, ctx.clone())?,
            _ => encoding::skip_field(wire_type, tag, &mut buf, ctx.clone())?,
        }
    }
    let Some(secret) = secret else { return Ok(Err(Error::Protocol("event without secret".into()))) };
    let Some(reference) = secret.reference else {
        return Ok(Err(Error::Protocol("secret without reference".into())));
    };
    Ok(Ok(Event {
        kind: kind.into(),
        index: index as usize,
        secret: Secret {
            reference: reference.into(),
            revision: secret.revision,
            key_version: secret.key_version,
            values: secret.values,
            raw: secret.raw,
            format: secret.format.into(),
        },
        error: error.map(Into::into),
    }))
}

/// The fields of a `Secret` as they arrive.
#[derive(Default)]
struct SecretFields {
    reference: Option<proto::SecretRef>,
    revision: String,
    key_version: u32,
    values: BTreeMap<String, SecretString>,
    raw: Option<SecretBox<[u8]>>,
    format: i32,
}

impl SecretFields {
    fn merge(&mut self, mut buf: &[u8], ctx: &DecodeContext) -> Result<(), WireError> {
        while buf.has_remaining() {
            let (tag, wire_type) = encoding::decode_key(&mut buf)?;
            match tag {
                1 => {
                    encoding::message::merge(wire_type, self.reference.get_or_insert_default(), &mut buf, ctx.clone())?
                }
                2 => self.revision = text(tag, delimited(tag, wire_type, &mut buf)?)?.to_owned(),
                3 => encoding::uint32::merge(wire_type, &mut self.key_version, &mut buf, ctx.clone())?,
                4 => self.merge_value(delimited(tag, wire_type, &mut buf)?, ctx)?,
                5 => {
                    let raw = delimited(tag, wire_type, &mut buf)?;
                    self.raw = (!raw.is_empty()).then(|| SecretBox::new(raw.into()));
                }
                6 => encoding::int32::merge(wire_type, &mut self.format, &mut buf, ctx.clone())?,
                _ => encoding::skip_field(wire_type, tag, &mut buf, ctx.clone())?,
            }
        }
        Ok(())
    }

    /// One entry of `values`: a later one for the same field replaces it.
    fn merge_value(&mut self, mut entry: &[u8], ctx: &DecodeContext) -> Result<(), WireError> {
        let (mut key, mut value): (&[u8], &[u8]) = (&[], &[]);
        while entry.has_remaining() {
            let (tag, wire_type) = encoding::decode_key(&mut entry)?;
            match tag {
                1 => key = delimited(tag, wire_type, &mut entry)?,
                2 => value = delimited(tag, wire_type, &mut entry)?,
                _ => encoding::skip_field(wire_type, tag, &mut entry, ctx.clone())?,
            }
        }
        let value = SecretString::from(text(2, value)?);
        self.values.insert(text(1, key)?.to_owned(), value);
        Ok(())
    }
}

/// The bytes of a length-delimited field, taken from `buf`.
fn delimited<'a>(tag: u32, wire_type: WireType, buf: &mut &'a [u8]) -> Result<&'a [u8], WireError> {
    encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
    let len = encoding::decode_varint(buf)?;
    if len > buf.len() as u64 {
        return Err(WireError::Truncated(tag));
    }
    let (field, rest) = buf.split_at(len as usize);
    *buf = rest;
    Ok(field)
}

fn text(tag: u32, bytes: &[u8]) -> Result<&str, WireError> {
    std::str::from_utf8(bytes).map_err(|_| WireError::NotUtf8(tag))
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use secrecy::ExposeSecret;

    use super::*;
    use crate::{EventKind, Format, SecretRef};

    fn secret() -> proto::Secret {
        proto::Secret {
            r#ref: Some(proto::SecretRef {
                namespace: "payments".into(),
                name: "db".into(),
                data_key: "secrets.json".into(),
                fields: vec!["user".into(), "password".into()],
            }),
            revision: "81234".into(),
            key_version: 7,
            values: [("user".to_owned(), "app".to_owned()), ("password".to_owned(), "hunter2".to_owned())].into(),
            raw: br#"{"user":"app","password":"hunter2"}"#.to_vec(),
            format: proto::Format::Json as i32,
        }
    }

    fn event() -> proto::SecretEvent {
        proto::SecretEvent {
            kind: proto::EventKind::Error as i32,
            index: 3,
            secret: Some(secret()),
            error: Some(proto::EventError { code: 9, message: "not valid JSON".into(), revision: "81235".into() }),
        }
    }

    /// What an event's bytes come to, in the client's terms.
    #[derive(Debug, PartialEq)]
    #[allow(clippy::large_enum_variant)] // compared once, never moved about
    enum Outcome {
        Refused,
        NoSecret,
        NoReference,
        Event {
            kind: EventKind,
            index: usize,
            reference: SecretRef,
            revision: String,
            key_version: u32,
            values: BTreeMap<String, String>,
            raw: Vec<u8>,
            format: Format,
            error: Option<(tonic::Code, String, String)>,
        },
    }

    /// By prost's generated code, then the client's conversions.
    fn by_prost(bytes: &[u8]) -> Outcome {
        let Ok(m) = proto::SecretEvent::decode(bytes) else { return Outcome::Refused };
        let Some(s) = m.secret else { return Outcome::NoSecret };
        let Some(reference) = s.r#ref else { return Outcome::NoReference };
        Outcome::Event {
            kind: m.kind.into(),
            index: m.index as usize,
            reference: reference.into(),
            revision: s.revision,
            key_version: s.key_version,
            values: s.values,
            raw: s.raw,
            format: s.format.into(),
            error: m.error.map(|e| (tonic::Code::from(e.code), e.message, e.revision)),
        }
    }

    /// By the decoder here.
    fn by_decoder(bytes: &[u8]) -> Outcome {
        let e = match decode(bytes) {
            Err(_) => return Outcome::Refused,
            Ok(Err(Error::Protocol(p))) if p == "event without secret" => return Outcome::NoSecret,
            Ok(Err(Error::Protocol(p))) if p == "secret without reference" => return Outcome::NoReference,
            Ok(Err(e)) => panic!("{e}"),
            Ok(Ok(e)) => e,
        };
        Outcome::Event {
            kind: e.kind,
            index: e.index,
            reference: e.secret.reference,
            revision: e.secret.revision,
            key_version: e.secret.key_version,
            values: e.secret.values.iter().map(|(k, v)| (k.clone(), v.expose_secret().to_owned())).collect(),
            raw: e.secret.raw.map(|r| r.expose_secret().to_vec()).unwrap_or_default(),
            format: e.secret.format,
            error: e.error.map(|e| (e.code, e.message, e.revision)),
        }
    }

    #[test]
    fn decodes_what_prost_decodes() {
        let bytes = event().encode_to_vec();
        let expected = by_prost(&bytes);
        let Outcome::Event { values, error, .. } = &expected else { panic!("{expected:?}") };
        assert_eq!(values["password"], "hunter2");
        assert_eq!(error.as_ref().map(|e| e.2.as_str()), Some("81235"));
        assert_eq!(by_decoder(&bytes), expected);
    }

    #[test]
    fn every_prefix_decodes_or_fails_as_prost_does() {
        let bytes = event().encode_to_vec();
        for end in 0..bytes.len() {
            // Cut after a whole field, it is a partial event; else refused.
            let prefix = &bytes[..end];
            assert_eq!(by_decoder(prefix), by_prost(prefix), "prefix of {end} bytes");
        }
    }

    /// Fields a newer agent might add, at every level; fields given twice
    /// (the later scalar wins, messages and maps merge); a secret in two parts.
    #[test]
    fn skips_unknown_fields_and_merges_repeated_ones() {
        let unknown = |buf: &mut Vec<u8>| {
            encoding::uint64::encode(15, &1, buf);
            encoding::string::encode(16, &"new".to_owned(), buf);
            encoding::fixed32::encode(17, &2, buf);
            encoding::fixed64::encode(18, &3, buf);
        };
        let mut first = secret();
        first.values = [("user".to_owned(), "old".to_owned()), ("host".to_owned(), "db".to_owned())].into();
        first.revision = "1".into();
        let mut first_bytes = Vec::new();
        unknown(&mut first_bytes);
        first.encode_raw(&mut first_bytes);
        // A values entry with an unknown field inside it.
        let mut entry = Vec::new();
        encoding::string::encode(1, &"port".to_owned(), &mut entry);
        unknown(&mut entry);
        encoding::string::encode(2, &"5432".to_owned(), &mut entry);
        encoding::bytes::encode(4, &entry, &mut first_bytes);
        let second = proto::Secret { r#ref: None, raw: b"second".to_vec(), ..secret() };

        let mut bytes = Vec::new();
        unknown(&mut bytes);
        encoding::int32::encode(1, &(proto::EventKind::Snapshot as i32), &mut bytes);
        encoding::bytes::encode(3, &first_bytes, &mut bytes);
        unknown(&mut bytes);
        encoding::message::encode(3, &second, &mut bytes);
        encoding::int32::encode(1, &(proto::EventKind::Recrypted as i32), &mut bytes);
        encoding::uint32::encode(2, &1, &mut bytes);

        let expected = by_prost(&bytes);
        // Merged as the generated code merges: all four fields, the later
        // user and raw document.
        let Outcome::Event { kind, index, values, raw, revision, .. } = &expected else { panic!("{expected:?}") };
        assert_eq!((*kind, *index, revision.as_str()), (EventKind::Recrypted, 1, "81234"));
        assert_eq!(values.keys().collect::<Vec<_>>(), ["host", "password", "port", "user"]);
        assert_eq!((values["user"].as_str(), values["port"].as_str()), ("app", "5432"));
        assert_eq!(raw, b"second");
        assert_eq!(by_decoder(&bytes), expected);
    }

    #[test]
    fn refuses_what_prost_refuses() {
        let mut not_utf8 = Vec::new();
        let mut entry = Vec::new();
        encoding::string::encode(1, &"password".to_owned(), &mut entry);
        encoding::bytes::encode(2, &vec![0xff, 0xfe], &mut entry);
        encoding::bytes::encode(4, &entry, &mut not_utf8);
        let mut bad_value = Vec::new();
        encoding::bytes::encode(3, &not_utf8, &mut bad_value);
        // A varint where the secret's revision (a string) belongs.
        let mut wrong_type = Vec::new();
        encoding::uint32::encode(2, &5, &mut wrong_type);
        let mut bad_revision = Vec::new();
        encoding::bytes::encode(3, &wrong_type, &mut bad_revision);
        // A length beyond the message.
        let overlong = vec![0x1a, 0x7f, 0x12];
        for bytes in [bad_value, bad_revision, overlong] {
            assert_eq!(by_prost(&bytes), Outcome::Refused);
            assert_eq!(by_decoder(&bytes), Outcome::Refused, "{bytes:?}");
        }
    }

    #[test]
    fn an_event_without_its_secret_or_reference_is_a_protocol_error() {
        let without_ref = proto::SecretEvent { secret: Some(proto::Secret { r#ref: None, ..secret() }), ..event() };
        let without_secret = proto::SecretEvent { secret: None, ..event() };
        assert_eq!(by_decoder(&without_ref.encode_to_vec()), Outcome::NoReference);
        assert_eq!(by_decoder(&without_secret.encode_to_vec()), Outcome::NoSecret);
    }
}
