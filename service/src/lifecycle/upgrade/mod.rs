//! Zero-downtime upgrade. The serving process listens on a control socket beside its pid file;
//! `usersvc upgrade` asks it to start a new server from the path it was itself started through
//! (argv[0] as given, so `current/bin/usersvc` means the release `current` points to now) and
//! hands it the listening socket: one socket, one accept queue, nothing dropped. The new server
//! opens the store, loads its snapshot, starts accepting and says READY; only then does the old
//! one stop accepting, drain (`server.rs`) and exit. A new server that fails or is not ready in
//! time is killed and the old one never stopped serving.
//!
//! Control protocol (one line each way): `upgrade <timeout ms>` → `ok <new pid>` or
//! `error <message>`. The two ends and what they share are children: `client.rs` (`usersvc
//! upgrade`: ask the running server, or start one detached), `control.rs` (the running
//! server's end: the control socket, who may use it, the handover), `spawn.rs` (starting a new
//! server with the socket and a channel to hear READY or its error, its arguments made
//! absolute). This file holds the command and its errors.

mod client;
mod control;
mod spawn;

pub(crate) use control::{Successor, listen_control};

use crate::lifecycle::pidfile;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(
        "upgrade needs a pid file to find the running server: set pid_file in the config file or pass --pid-file"
    )]
    NoPidFile,
    #[error(
        "usersvc is not running (no live pid in {0}): start it, or run `usersvc upgrade --start`"
    )]
    NotRunning(PathBuf),
    #[error("cannot read {path}: {source}")]
    PidFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the running server (pid {pid}) does not answer on {path}: {source}")]
    Control {
        pid: u32,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("upgrade refused: {0}")]
    Refused(String),
    #[error("the new server failed, the old one keeps serving: {0}")]
    NewServer(String),
    #[error("the server did not start: {0}")]
    Start(String),
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// What `usersvc upgrade` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgraded {
    Replaced { old: u32, new: u32 },
    Started { pid: u32 },
}

impl std::fmt::Display for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upgraded::Replaced { old, new } => write!(f, "usersvc upgraded: pid {old} -> {new}"),
            Upgraded::Started { pid } => write!(f, "usersvc started: pid {pid}"),
        }
    }
}

/// `usersvc upgrade`: replace the running server, or with `start` start one when none runs.
pub async fn upgrade(
    pid_file: Option<&Path>,
    start: bool,
    timeout: Duration,
) -> Result<Upgraded, UpgradeError> {
    let pid_file = pid_file.ok_or(UpgradeError::NoPidFile)?;
    let running = pidfile::read_live(pid_file).map_err(|source| UpgradeError::PidFile {
        path: pid_file.to_owned(),
        source,
    })?;
    match running {
        Some(pid) => client::replace(pid_file, pid, timeout).await,
        None if start => client::start_detached(pid_file, timeout).await,
        None => Err(UpgradeError::NotRunning(pid_file.to_owned())),
    }
}

const IN_PROGRESS: &str = "an upgrade is already in progress";
