//! `deployer`: Capistrano-style releases over SSH to many hosts, all or nothing.
//!
//! Each host gets `releases/<UTC timestamp>/`, a `current` symlink switched atomically,
//! `shared/`, `revisions.log` and `.deploy/` (lock, log, manifests, bad marks), as Capistrano 3
//! lays them out. A deploy is staged on
//! every host before any host publishes; a failure before publish removes the staged release
//! everywhere, a failure after publish puts every host back on its previous release.
//!
//! Every command is a function from the configuration, the selected hosts and the
//! [`Settings`] to an [`Outcome`]: a summary to print and a verdict.
//!
//! ```
//! use deployer::{Config, HostKeyPolicy, Outcome, Settings};
//! use std::time::Duration;
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("deploy.toml");
//! std::fs::write(&path, r#"
//!     application = "usersvc"
//!     deploy_to = "/srv/usersvc"
//!     source = "dist"
//!     [[hosts]]
//!     address = "127.0.0.1:1"
//!     roles = ["app"]
//! "#)?;
//! let cfg = Config::load(&path)?;
//! let hosts = cfg.targets(&[], Some("app"))?;
//! let ssh = cfg.ssh_settings(HostKeyPolicy::Strict, Duration::from_secs(2));
//!
//! // Nothing listens on port 1: the host is not ready, and the table says why.
//! let checked = deployer::check(&cfg, &hosts, &Settings::new(ssh));
//! assert!(checked.verdict().is_err());
//! assert!(checked.to_string().contains("cannot connect to 127.0.0.1:1"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ARCHITECTURE.md maps the modules and the invariants they keep.

mod build;
mod commands;
mod config;
mod delta;
mod events;
mod fleet;
mod hash_cache;
mod health;
mod history;
mod host_output;
mod layout;
mod live_manifests;
mod lock;
mod manifest;
mod outcome;
mod phases;
mod progress;
mod remote_text;
mod report;
mod settings;
mod source;
mod ssh;
mod table;
#[cfg(test)]
mod tidy;
mod upload;

pub use commands::{
    Checked, Cleanup, DeployError, Followed, HostReleases, HostReport, Listing, Moved, Options,
    Plan, Rollback, ShownConfig, TaskError, TaskList, Unlocked, check, cleanup, deploy, exec,
    follow, list, list_tasks, logs, plan, rollback, run_task, show_config, unlock,
};
pub use config::{Canary, Config, ConfigError, Problem, SelectError, Target};
pub use fleet::{Failure, Stage, raise_open_files_limit};
pub use history::{
    Entry as HistoryEntry, History, HistoryError, path as history_path, read as read_history,
    record as record_history,
};
pub use host_output::{Executed, HostRun};
pub use layout::{HostState, ReleaseInfo};
pub use outcome::{Outcome, Unfinished};
pub use report::{HookRun, HostOutcome, Report};
pub use settings::Settings;
pub use ssh::{BadJump, HostKeyPolicy, Jump, Route, SshSettings, parse_jumps};
