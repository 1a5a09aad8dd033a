//! Parsers of everything vaultlet reads from outside its process: secret
//! documents, `/proc/<pid>/cgroup` files, ServiceAccount token claims, and the
//! agent's config and policy files. Kept apart, with few dependencies, so the
//! fuzzer builds and runs them in seconds.

pub mod cgroup;
pub mod config;
pub mod document;
pub mod policy_file;
pub mod token;
