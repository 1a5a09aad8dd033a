//! `vaultlet inject`: a mutating admission webhook (HTTPS, `AdmissionReview` v1)
//! that gives a pod annotated `vaultlet.io/inject: "true"` what it needs to reach
//! the node's agent: the CSI volume of the socket directory, a projected token
//! for the agent's audience, their mounts and the socket's group.
//!
//! `mutate` is the pure heart (a pod in, the pod it should become out),
//! `review` wraps it in the AdmissionReview protocol, `tls` serves a certificate
//! from files or a self-signed one, `server` is the HTTPS listener.

mod error;
mod mutate;
mod review;
mod server;
mod tls;

pub use error::{ServeError, TlsError};
pub use mutate::{INJECT, INJECT_CONTAINERS, Injection, Pod, Refusal, SOCKET_VOLUME, TOKEN_VOLUME, mutate};
pub use review::review;
pub use server::{Config, serve};
pub use tls::Tls;

/// Where the API server sends reviews (the `path` of the webhook
/// configuration's clientConfig).
pub const MUTATE_PATH: &str = "/mutate";
/// Answers 200 once the listener serves TLS: the readiness probe.
pub const HEALTH_PATH: &str = "/healthz";
