//! `deployer`: Capistrano-style releases over SSH to many hosts, all or nothing. `deploy.rs`
//! holds the flow; ARCHITECTURE.md maps the other modules and the invariants they keep.

pub mod check;
pub mod config;
pub mod deploy;
pub mod events;
pub mod fleet;
pub mod health;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod releases;
pub mod report;
pub mod rollback;
pub mod ssh;
pub mod upload;
