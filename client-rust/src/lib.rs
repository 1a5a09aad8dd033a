//! Typed async client for vaultlet, the node-local secrets agent.
//!
//! ```no_run
//! # async fn demo() -> Result<(), vaultlet_client::Error> {
//! use secrecy::ExposeSecret;
//! let client = vaultlet_client::Client::connect_default().await?;
//! let secrets = client.get_secrets(["app", "payments/db:secrets.json"]).await?;
//! let password = secrets["app"].values["db_password"].expose_secret();
//! # let _ = password; Ok(()) }
//! ```

pub mod proto {
    //! Generated `vaultlet.v1` messages and service stubs.
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("vaultlet.v1");

    /// Encoded `FileDescriptorSet` of the wire API (for server reflection).
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("vaultlet_v1_descriptor");
}

#[cfg(feature = "server")]
pub mod server {
    //! The `Secrets` server trait (for the agent): `proto`'s messages, but
    //! `WatchSecrets` sends `EncodedEvent`s.
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/server/vaultlet.v1.rs"));
}

mod client;
#[doc(hidden)]
pub mod codec;
#[cfg(feature = "server")]
pub mod encoded;
mod error;
mod event_decoder;
pub mod reference;
mod secret;
mod token;
mod watch;

pub use client::{Client, DEFAULT_SOCKET, SOCKET_ENV};
pub use error::{Error, code_name};
pub use reference::{RefError, SecretRef};
pub use secret::{Event, EventError, EventKind, Format, Secret};
pub use token::{DEFAULT_TOKEN_FILE, FEATURES_METADATA, INDEXED_TOKEN, TOKEN_FILE_ENV, TOKEN_METADATA, TokenSource};
/// Status codes, as `Error::code` returns them.
pub use tonic::Code;
pub use watch::WatchStream;
