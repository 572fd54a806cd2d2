//! `ServerSettings`: how the server listens, its threads and what one connection may cost (the
//! "Serving" group of flags), and the limits they resolve to.

use std::path::PathBuf;
use std::time::Duration;

/// Descriptors kept for everything but client connections (store, journal, logs, upgrades).
pub(crate) const RESERVED_FDS: u64 = 64;

/// How the server listens, its threads and what one connection may cost: `--listen`, the
/// connection limits and the pid file (keys of the config file as the flags, with underscores).
#[derive(clap::Args, serde::Serialize, serde::Deserialize, Clone)]
#[command(next_help_heading = "Serving")]
pub struct ServerSettings {
    /// Address to listen on; port 0 picks a free port
    #[arg(
        long,
        env = "USERSVC_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: String,

    /// Threads serving requests [default: one per CPU core]
    #[arg(long, env = "USERSVC_WORKERS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..), global = true)]
    pub workers: Option<u16>,

    /// Most open client connections; past it the longest-idle ones are closed to make room
    /// [default: the open-file limit less 64]
    #[arg(long, env = "USERSVC_MAX_CONNECTIONS", value_name = "N",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..), global = true)]
    pub max_connections: Option<usize>,

    /// Longest a client may take to send a request's headers; then the connection is closed
    #[arg(long, env = "USERSVC_HEADER_TIMEOUT", value_name = "DURATION", default_value = "10s",
        value_parser = toolkit_core::duration::positive, global = true)]
    #[serde(with = "toolkit_core::duration")]
    pub header_timeout: Duration,

    /// Longest a keep-alive connection may sit idle between requests
    #[arg(long, env = "USERSVC_IDLE_TIMEOUT", value_name = "DURATION", default_value = "60s",
        value_parser = toolkit_core::duration::positive, global = true)]
    #[serde(with = "toolkit_core::duration")]
    pub idle_timeout: Duration,

    /// Write the serving pid here (needed by `upgrade`); a control socket sits beside it (.ctl)
    #[arg(long, env = "USERSVC_PID_FILE", value_name = "PATH", global = true)]
    pub pid_file: Option<PathBuf>,
}

impl ServerSettings {
    /// What one connection may cost, the connection limit resolved.
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections.unwrap_or_else(default_max_connections),
        }
    }
}

/// What one connection may cost.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// The default connection limit: the open-file limit less what the rest of the process needs.
fn default_max_connections() -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    soft.saturating_sub(RESERVED_FDS).clamp(16, 100_000) as usize
}
