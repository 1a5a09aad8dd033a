//! vaultlet: a node-local secrets agent for Kubernetes.
//!
//! Requests flow one way: `server` -> `identity` -> `policy` -> `cache` ->
//! `source` (and, in production, Transit). Changes flow back through the
//! cache's state channels to `hub`, which fans them out to subscribers.

pub mod admin;
pub mod audit;
pub mod cache;
pub mod cli;
pub mod config;
pub mod fanout;
pub mod hub;
pub mod hygiene;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod secret;
pub mod server;
pub mod source;
pub mod states;
pub mod transit;
