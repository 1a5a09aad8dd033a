//! Helpers shared by the end-to-end tests and the benchmark.

pub mod agent;
pub mod bao;
pub mod bench;
pub mod cgroup;
pub mod events;
pub mod kube_api;
pub mod stack;
