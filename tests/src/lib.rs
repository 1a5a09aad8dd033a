//! Helpers shared by the end-to-end tests and the benchmark.

pub mod agent;
pub mod bao;
pub mod bench;
pub mod cgroup;
pub mod cluster;
pub mod controlplane;
pub mod events;
pub mod lagging_cache;
pub mod proxy;
pub mod stack;
