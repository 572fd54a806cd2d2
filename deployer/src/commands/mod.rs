//! The deployer's commands, one module each (`deploy` a folder: its flow outgrew a file). Each
//! is a whole command over the shared phases below it (`phases`, `fleet`, `lock`, `layout`, …).
//!
//! Architecture Invariant: a command never imports another (`src/tidy.rs` checks it): what two
//! commands share is a stage, written once below them, so changing one command cannot change
//! another.

mod check;
mod deploy;
mod exec;
mod logs;
mod releases;
mod rollback;
mod show_config;
mod tasks;
mod unlock;

pub use check::{Checked, HostReport, check};
pub use deploy::{DeployError, Options, Plan, deploy, plan};
pub use exec::exec;
pub use logs::{Followed, follow, logs};
pub use releases::{Cleanup, HostReleases, Listing, cleanup, list};
pub use rollback::{Moved, Rollback, rollback};
pub use show_config::{ShownConfig, show_config};
pub use tasks::{TaskError, TaskList, list_tasks, run_task};
pub use unlock::{Unlocked, unlock};
