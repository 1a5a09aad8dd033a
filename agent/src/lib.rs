//! vaultlet: a node-local secrets agent for Kubernetes.
//!
//! Requests flow one way: `server` -> `identity` -> `policy` -> `cache` ->
//! `source` (and, in production, Transit). Changes flow back through the
//! cache's state channels to `hub`, which fans them out to subscribers.

pub mod cache;
pub mod cli;
pub mod document;
pub mod hub;
pub mod identity;
pub mod policy;
pub mod secret;
pub mod server;
pub mod source;
