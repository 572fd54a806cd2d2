//! `ApiSettings`: who may call and what one request may cost (the "Requests" group of flags).

use super::rpc;
use std::path::PathBuf;
use std::time::Duration;

/// The largest `--body-limit` allowed: a queued write is one journal record, and records are
/// bounded (`store/journal.rs`).
pub const MAX_BODY_LIMIT: usize = 64 << 20;

/// Who may call and what one request may cost (keys of the config file as the flags, with
/// underscores).
#[derive(clap::Args, serde::Serialize, serde::Deserialize, Clone)]
#[command(next_help_heading = "Requests")]
pub struct ApiSettings {
    /// Require `Authorization: Bearer TOKEN` on POST / and GET /metrics (the health probes and
    /// /version stay open)
    #[arg(
        long,
        env = "USERSVC_AUTH_TOKEN",
        value_name = "TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub auth_token: Option<String>,

    /// Read the bearer token from this file (its trailing newline dropped); keeps it off the
    /// command line and out of the environment. Prefer it to --auth-token
    #[arg(
        long,
        env = "USERSVC_AUTH_TOKEN_FILE",
        value_name = "FILE",
        global = true
    )]
    pub auth_token_file: Option<PathBuf>,

    /// Serve GET /metrics without the bearer token (for a Prometheus that scrapes without one);
    /// without a token set, /metrics is open anyway. `--metrics-public=false` turns it off
    #[arg(long, env = "USERSVC_METRICS_PUBLIC", value_name = "BOOL", num_args = 0..=1,
        require_equals = true, action = clap::ArgAction::Set, default_value_t = false,
        default_missing_value = "true", global = true)]
    pub metrics_public: bool,

    /// Largest request body in bytes; larger ones get HTTP 413 (at most 67108864)
    #[arg(long, env = "USERSVC_BODY_LIMIT", value_name = "BYTES", default_value_t = 1 << 20,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_BODY_LIMIT as u64),
        global = true)]
    pub body_limit: usize,

    /// Longest a client may take to send a request's body (HTTP 408 after it)
    #[arg(long, env = "USERSVC_BODY_TIMEOUT", value_name = "DURATION", default_value = "30s",
        value_parser = toolkit_core::duration::positive, global = true)]
    #[serde(with = "toolkit_core::duration")]
    pub body_timeout: Duration,

    /// Longest a request may take, e.g. 500ms, 30s, 1m
    #[arg(long, env = "USERSVC_REQUEST_TIMEOUT", value_name = "DURATION", default_value = "30s",
        value_parser = toolkit_core::duration::positive, global = true)]
    #[serde(with = "toolkit_core::duration")]
    pub request_timeout: Duration,

    /// Most calls in one JSON-RPC batch; a larger batch is refused whole (-32600)
    #[arg(long, env = "USERSVC_MAX_BATCH", value_name = "N",
        default_value_t = rpc::Limits::DEFAULT.max_batch,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
        global = true)]
    pub max_batch: usize,

    /// Largest answer to one request in bytes; a read past it is refused (-32004: page with
    /// limit/after)
    #[arg(long, env = "USERSVC_MAX_RESPONSE", value_name = "BYTES",
        default_value_t = rpc::Limits::DEFAULT.max_response,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..),
        global = true)]
    pub max_response: usize,
}

impl ApiSettings {
    /// What the dispatcher allows one body.
    pub fn limits(&self) -> rpc::Limits {
        rpc::Limits {
            max_batch: self.max_batch,
            max_response: self.max_response,
        }
    }
}
