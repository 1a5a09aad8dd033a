//! The gRPC codec of both ends: prost, with small encode buffers, and messages
//! that carry secret values wiped once they are encoded. tonic keeps one encode
//! buffer per call for the call's whole life, 8 KiB by default: on the agent,
//! 10,000 watch streams would hold 80 MiB of them. Messages here are small; a
//! larger one grows its buffer as needed.

use std::marker::PhantomData;

use prost::Message;
use prost::bytes::Buf;
use secrecy::zeroize::Zeroize;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::event_decoder::{EventDecoder, Received};
use crate::proto;

/// An event of a secret with a few short values (a password, a user, a host)
/// fits; a larger one grows its stream's buffer once. 512 cost 10,000 idle
/// streams about 1.5 MiB more (measured), for events that rarely need it.
const ENCODE_BUFFER: usize = 256;
/// tonic's default: how much encoded output a stream buffers before yielding it.
const YIELD_THRESHOLD: usize = 32 * 1024;

#[derive(Debug, Clone)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        SmallBufferCodec(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: Message + Wipe + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = WipingEncoder<T>;
    type Decoder = SliceDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        WipingEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        SliceDecoder(PhantomData)
    }
}

/// The codec of a watch: its request as any other, its events decoded
/// straight into the client's (`event_decoder`).
#[derive(Debug, Clone, Default)]
pub struct WatchCodec;

impl Codec for WatchCodec {
    type Encode = proto::WatchSecretsRequest;
    type Decode = Received;
    type Encoder = WipingEncoder<proto::WatchSecretsRequest>;
    type Decoder = EventDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        WipingEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        EventDecoder
    }
}

/// prost's decode, from a slice when the message lies in one piece (tonic
/// gathers each message into one buffer): prost reads a slice much faster
/// than tonic's buffer type, which it advances call by call for each field's
/// varints and bytes. A watch event cost its receiver 14,500 instructions
/// with tonic_prost's decoder, 13,000 with this one (callgrind,
/// `vaultlet-bench --only instructions`).
#[derive(Debug)]
pub struct SliceDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for SliceDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let whole = buf.remaining();
        let decoded = if buf.chunk().len() == whole {
            let decoded = U::decode(buf.chunk());
            buf.advance(whole);
            decoded
        } else {
            U::decode(buf)
        };
        // As tonic_prost reports it.
        decoded.map(Some).map_err(|e| Status::internal(e.to_string()))
    }
}

/// Encodes a message, then wipes the values it carried: the copy of a secret
/// made for the wire does not outlive its encoding. (The encoded bytes are
/// HTTP/2's from then on: its buffers are freed, not wiped.)
#[derive(Debug)]
pub struct WipingEncoder<T>(PhantomData<T>);

impl<T: Message + Wipe> Encoder for WipingEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, mut item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        let encoded = item.encode(buf).map_err(|e| Status::internal(format!("encoding a message: {e}")));
        item.wipe();
        encoded
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD)
    }
}

/// Zeroizes the secret values a message holds (nothing, for most).
pub trait Wipe {
    fn wipe(&mut self) {}
}

impl Wipe for proto::GetSecretsRequest {}
impl Wipe for proto::WatchSecretsRequest {}

impl Wipe for proto::Secret {
    fn wipe(&mut self) {
        for (_, mut value) in std::mem::take(&mut self.values) {
            value.zeroize();
        }
        self.raw.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_wiped_once_encoded() {
        let mut s = proto::Secret {
            values: [("password".to_owned(), "hunter2".to_owned())].into(),
            raw: b"{\"password\":\"hunter2\"}".to_vec(),
            ..Default::default()
        };
        let encoded = s.encode_to_vec();
        s.wipe();
        assert!(s.values.is_empty() && s.raw.is_empty());
        assert_eq!(proto::Secret::decode(&encoded[..]).unwrap().values["password"], "hunter2");
    }
}
