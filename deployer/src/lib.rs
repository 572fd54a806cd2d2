//! `deployer`: Capistrano-style releases over SSH. So far: the strict `deploy.toml` schema
//! (`config.rs`), SSH with strict host-key checking (`ssh.rs`) and the `check` command
//! (`check.rs`). The deploy flow itself is the open part of its issue.

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
