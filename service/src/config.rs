//! Configuration: command-line flags, each with a `USERSVC_*` environment variable, over an
//! optional TOML file, over defaults. Precedence: flag > environment > file > default.

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

const AFTER_HELP: &str = "\
Examples:
  usersvc                                     serve on 127.0.0.1:8080, store in ./usersvc.db
  usersvc --listen 0.0.0.0:9000 --database-url postgres://usersvc@db/usersvc
  usersvc --config /etc/usersvc/config.toml   same keys as the long flags: listen = \"...\"
  usersvc import users.json                   load a JSON array of users, all or nothing
  usersvc --config shared/usersvc.toml upgrade --start
                                              hand the socket to a new server (or start one)

  curl -s localhost:8080 -H 'content-type: application/json' \\
       -d '{\"jsonrpc\":\"2.0\",\"method\":\"get_users\",\"id\":1}'

Methods: get_users, get_user, put_user, put_users, delete_user, ping, version, rpc.discover
(rpc.discover returns the OpenRPC document). GET /health and GET /version need no auth.";

#[derive(Parser, Debug)]
#[command(
    name = "usersvc",
    version,
    about = "A JSON-RPC 2.0 over HTTP user service (SQLite by default, PostgreSQL to share data)",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub options: Options,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum Command {
    /// Serve JSON-RPC over HTTP (the default when no command is given)
    Serve,
    /// Load a JSON array of user objects from FILE in one transaction, then exit
    Import {
        /// A JSON file holding an array of user objects, each with a string "id"
        file: PathBuf,
    },
    /// Replace the running server (the pid in --pid-file) without dropping a connection
    ///
    /// The running server starts a new server from the path it was started through (through
    /// `current/bin/usersvc` that is the release `current` points to now) and hands it the
    /// listening socket. Once the new server has opened the store and says it is ready, the old
    /// one stops accepting, answers what is in flight with `Connection: close`, and exits.
    /// Exits 0 once the new server serves; 1 if it failed (the old one keeps serving).
    #[command(after_help = UPGRADE_HELP)]
    Upgrade {
        /// When no server is running, start one in the background and wait until it serves
        #[arg(long)]
        start: bool,
        /// Longest wait for the new server to be ready; past it, it is killed
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "30s")]
        timeout: Duration,
    },
}

const UPGRADE_HELP: &str = "\
A new server runs in the config file's directory (without --config, in the directory upgrade
ran from), never in a release directory that cleanup may remove; relative paths given as flags
are made absolute first. One started by --start has stdin and stdout on /dev/null and its log
appended to the pid file's name with .log (usersvc.pid -> usersvc.log). When a new server exits
before it is ready, the error quotes the last lines it wrote to that log.

Examples:
  usersvc --config /srv/usersvc/shared/usersvc.toml upgrade --start   (a deploy hook)
  systemctl reload usersvc                      (the shipped unit's ExecReload runs upgrade)";

/// Every setting, written once: its flag, environment variable and help here, the same name
/// (with underscores) as a key of the TOML file, and its default in [`Settings`].
#[derive(Args, Serialize, Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// TOML file with any of the settings below (keys as the long flags, with underscores); paths in it are relative to its directory, paths in flags and the environment to the working directory
    #[arg(long, env = "USERSVC_CONFIG", value_name = "FILE", global = true)]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address to listen on; port 0 picks a free port [default: 127.0.0.1:8080]
    #[arg(long, env = "USERSVC_LISTEN", value_name = "ADDR", global = true)]
    pub listen: Option<String>,

    /// sqlite://PATH (created on first run) or postgres://USER@HOST:PORT/DB [default: sqlite://usersvc.db]
    #[arg(
        long,
        env = "USERSVC_DATABASE_URL",
        value_name = "URL",
        global = true,
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    /// Require `Authorization: Bearer TOKEN` on POST / and GET /metrics (the health probes and /version stay open)
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
    /// without a token set, /metrics is open anyway [default: false]
    #[arg(long, env = "USERSVC_METRICS_PUBLIC", value_name = "BOOL", num_args = 0..=1,
        default_missing_value = "true", global = true)]
    pub metrics_public: Option<bool>,

    /// Largest request body in bytes; larger ones get HTTP 413 (at most 67108864) [default: 1048576]
    #[arg(long, env = "USERSVC_BODY_LIMIT", value_name = "BYTES", global = true)]
    pub body_limit: Option<usize>,

    /// Most calls in one JSON-RPC batch; a larger batch is refused whole (-32600) [default: 1000]
    #[arg(long, env = "USERSVC_MAX_BATCH", value_name = "N", global = true)]
    pub max_batch: Option<usize>,

    /// Largest answer to one request in bytes; a read past it is refused (-32004: page with limit/after) [default: 16777216]
    #[arg(
        long,
        env = "USERSVC_MAX_RESPONSE",
        value_name = "BYTES",
        global = true
    )]
    pub max_response: Option<usize>,

    /// Longest a client may take to send a request's headers; then the connection is closed [default: 10s]
    #[arg(long, env = "USERSVC_HEADER_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration, global = true)]
    #[serde(default, with = "toolkit_core::duration::optional")]
    pub header_timeout: Option<Duration>,

    /// Longest a keep-alive connection may sit idle between requests [default: 60s]
    #[arg(long, env = "USERSVC_IDLE_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration, global = true)]
    #[serde(default, with = "toolkit_core::duration::optional")]
    pub idle_timeout: Option<Duration>,

    /// Longest a client may take to send a request's body (HTTP 408 after it) [default: 30s]
    #[arg(long, env = "USERSVC_BODY_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration, global = true)]
    #[serde(default, with = "toolkit_core::duration::optional")]
    pub body_timeout: Option<Duration>,

    /// Most open client connections; past it the longest-idle ones are closed to make room [default: the open-file limit less 64]
    #[arg(long, env = "USERSVC_MAX_CONNECTIONS", value_name = "N", global = true)]
    pub max_connections: Option<usize>,

    /// Longest a request may take, e.g. 500ms, 30s, 1m [default: 30s]
    #[arg(long, env = "USERSVC_REQUEST_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration, global = true)]
    #[serde(default, with = "toolkit_core::duration::optional")]
    pub request_timeout: Option<Duration>,

    /// Where writes are queued (fsync'd) while the store is unreachable; the snapshot copy a cold start serves sits beside it (.snapshot) [default: usersvc.journal]
    #[arg(long, env = "USERSVC_JOURNAL", value_name = "PATH", global = true)]
    pub journal: Option<PathBuf>,

    /// Longest wait for the database (a connection, a batch of writes) before it counts as unreachable and writes are queued [default: 2s]
    #[arg(long, env = "USERSVC_STORE_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration, global = true)]
    #[serde(default, with = "toolkit_core::duration::optional")]
    pub store_timeout: Option<Duration>,

    /// Consecutive store failures that open the circuit breaker [default: 3]
    #[arg(long, env = "USERSVC_BREAKER_FAILURES", value_name = "N", value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub breaker_failures: Option<u32>,

    /// Wait before probing an unreachable store (doubles per failed probe) [default: 1s]
    #[arg(long, env = "USERSVC_BREAKER_BACKOFF", value_name = "DURATION", value_parser = humantime::parse_duration, global = true)]
    #[serde(default, with = "toolkit_core::duration::optional")]
    pub breaker_backoff: Option<Duration>,

    /// Pull users from this URL (a JSON array of user objects with ids) every --pull-interval
    #[arg(
        long,
        env = "USERSVC_PULL_URL",
        value_name = "URL",
        global = true,
        hide_env_values = true
    )]
    pub pull_url: Option<String>,

    /// How often to pull [default: 1m]
    #[arg(long, env = "USERSVC_PULL_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration, global = true)]
    #[serde(default, with = "toolkit_core::duration::optional")]
    pub pull_interval: Option<Duration>,

    /// Longest one pull may take [default: 10s]
    #[arg(long, env = "USERSVC_PULL_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration, global = true)]
    #[serde(default, with = "toolkit_core::duration::optional")]
    pub pull_timeout: Option<Duration>,

    /// Largest pulled payload in bytes; a larger one is refused whole [default: 16777216]
    #[arg(
        long,
        env = "USERSVC_PULL_MAX_SIZE",
        value_name = "BYTES",
        global = true
    )]
    pub pull_max_size: Option<u64>,

    /// Send a heartbeat and metrics to this Riemann server (HOST:PORT, TCP)
    #[arg(long, env = "USERSVC_RIEMANN", value_name = "HOST:PORT", global = true)]
    pub riemann: Option<String>,

    /// Reporting interval; events carry ttl = 3 x interval [default: 5s]
    #[arg(long, env = "USERSVC_RIEMANN_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration, global = true)]
    #[serde(default, with = "toolkit_core::duration::optional")]
    pub riemann_interval: Option<Duration>,

    /// Threads serving requests [default: one per CPU core]
    #[arg(long, env = "USERSVC_WORKERS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..), global = true)]
    pub workers: Option<u16>,

    /// Write the serving pid here (needed by `upgrade`); a control socket sits beside it (.ctl)
    #[arg(long, env = "USERSVC_PID_FILE", value_name = "PATH", global = true)]
    pub pid_file: Option<PathBuf>,

    /// The host name Riemann events carry [default: this machine's hostname]
    #[arg(long, env = "USERSVC_RIEMANN_HOST", value_name = "NAME", global = true)]
    pub riemann_host: Option<String>,

    /// Log line format on stderr [default: text]
    #[arg(long, env = "USERSVC_LOG_FORMAT", value_name = "FORMAT", global = true)]
    pub log_format: Option<LogFormat>,

    /// Log filter, e.g. info, debug, usersvc::access=debug (a line per call; failed calls are at info), sqlx=warn [default: info]
    #[arg(long, env = "USERSVC_LOG", value_name = "FILTER", global = true)]
    pub log: Option<String>,
}

#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// A setting out of its allowed range, whichever layer set it.
    #[error("{0}")]
    Setting(String),
}

/// The largest `body_limit` allowed: a queued write is one journal record, and records are
/// bounded (`store/journal.rs`).
pub const MAX_BODY_LIMIT: usize = 64 << 20;

/// Every setting resolved: flag > environment > file > the default written here.
#[derive(Deserialize, Debug, Clone)]
pub struct Settings {
    #[serde(default = "default::listen")]
    pub listen: String,
    #[serde(default = "default::database_url")]
    pub database_url: String,
    pub auth_token: Option<String>,
    pub auth_token_file: Option<PathBuf>,
    #[serde(default)]
    pub metrics_public: bool,
    #[serde(default = "default::body_limit")]
    pub body_limit: usize,
    #[serde(default = "default::max_batch")]
    pub max_batch: usize,
    #[serde(default = "default::max_response")]
    pub max_response: usize,
    #[serde(default = "default::header_timeout", with = "toolkit_core::duration")]
    pub header_timeout: Duration,
    #[serde(default = "default::idle_timeout", with = "toolkit_core::duration")]
    pub idle_timeout: Duration,
    #[serde(default = "default::body_timeout", with = "toolkit_core::duration")]
    pub body_timeout: Duration,
    /// `None`: from the open-file limit (`crate::lifecycle::server::Limits`).
    pub max_connections: Option<usize>,
    #[serde(default = "default::request_timeout", with = "toolkit_core::duration")]
    pub request_timeout: Duration,
    #[serde(default = "default::journal")]
    pub journal: PathBuf,
    pub riemann: Option<String>,
    #[serde(default = "default::riemann_interval", with = "toolkit_core::duration")]
    pub riemann_interval: Duration,
    pub riemann_host: Option<String>,
    pub pull_url: Option<String>,
    #[serde(default = "default::pull_interval", with = "toolkit_core::duration")]
    pub pull_interval: Duration,
    #[serde(default = "default::pull_timeout", with = "toolkit_core::duration")]
    pub pull_timeout: Duration,
    #[serde(default = "default::pull_max_size")]
    pub pull_max_size: u64,
    #[serde(default = "default::store_timeout", with = "toolkit_core::duration")]
    pub store_timeout: Duration,
    pub pid_file: Option<PathBuf>,
    #[serde(default = "default::breaker_failures")]
    pub breaker_failures: u32,
    #[serde(default = "default::breaker_backoff", with = "toolkit_core::duration")]
    pub breaker_backoff: Duration,
    /// `None`: one per core.
    pub workers: Option<u16>,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default = "default::log")]
    pub log: String,
}

/// The defaults, each written once (the flags' help repeats them for the reader).
mod default {
    use std::path::PathBuf;
    use std::time::Duration;

    pub fn listen() -> String {
        "127.0.0.1:8080".into()
    }
    pub fn database_url() -> String {
        "sqlite://usersvc.db".into()
    }
    pub fn body_limit() -> usize {
        1024 * 1024
    }
    pub fn request_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_batch() -> usize {
        1000
    }
    pub fn max_response() -> usize {
        16 * 1024 * 1024
    }
    pub fn header_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn body_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn journal() -> PathBuf {
        PathBuf::from("usersvc.journal")
    }
    pub fn riemann_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub fn pull_interval() -> Duration {
        Duration::from_secs(60)
    }
    pub fn pull_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn pull_max_size() -> u64 {
        16 * 1024 * 1024
    }
    pub fn store_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn breaker_failures() -> u32 {
        3
    }
    pub fn breaker_backoff() -> Duration {
        Duration::from_secs(1)
    }
    pub fn log() -> String {
        "info".into()
    }
}

/// Durations as people write them (`500ms`, `30s`, `1m`), in the file and between the layers.
impl Options {
    /// Flags (with their environment variables) over the file over the defaults.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let path = self.config.clone().unwrap_or_default();
        let invalid = |message: String| ConfigError::Invalid {
            path: path.clone(),
            message,
        };
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        // Paths in the file mean the same file wherever usersvc is started from: they are the
        // file's directory's; flags and the environment are the working directory's.
        let home = match &self.config {
            Some(path) => cwd
                .join(path)
                .parent()
                .map_or_else(|| cwd.clone(), Path::to_path_buf),
            None => cwd.clone(),
        };
        let file = match &self.config {
            Some(path) => load_file(path)?.anchored(&home),
            None => Options::default(),
        };
        let flags = self.anchored(&cwd);
        // Each layer as the keys it sets; a later layer's key wins.
        let mut merged = serde_json::Map::new();
        for layer in [&file, &flags] {
            if let serde_json::Value::Object(keys) =
                serde_json::to_value(layer).map_err(|e| invalid(e.to_string()))?
            {
                merged.extend(keys.into_iter().filter(|(_, v)| !v.is_null()));
            }
        }
        let mut settings: Settings =
            serde_json::from_value(merged.into()).map_err(|e| invalid(e.to_string()))?;
        // Defaults (usersvc.db, usersvc.journal) sit beside the config file when there is one.
        settings.journal = anchor(&settings.journal, &home);
        settings.database_url = anchor_url(&settings.database_url, &home);
        settings.auth_token = settings.auth_token.filter(|t| !t.is_empty());
        settings.check()?;
        if let Some(path) = &settings.auth_token_file {
            if settings.auth_token.is_some() {
                return Err(ConfigError::Setting(
                    "auth_token and auth_token_file are both set: keep one (the file)".into(),
                ));
            }
            settings.auth_token = Some(read_secret(path)?);
        }
        Ok(settings)
    }
}

/// `path` made absolute against `base` (unchanged when it already is).
pub(crate) fn anchor(path: &Path, base: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

/// A `sqlite:` URL's relative file made absolute against `base`; any other URL unchanged.
pub(crate) fn anchor_url(url: &str, base: &Path) -> String {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return url.to_owned();
    };
    let (file, query) = match rest.split_once('?') {
        Some((f, q)) => (f, format!("?{q}")),
        None => (rest, String::new()),
    };
    if file.is_empty() || file.starts_with('/') || file.contains(":memory:") {
        return url.to_owned();
    }
    format!("sqlite://{}{query}", base.join(file).display())
}

impl Options {
    /// Its relative paths made absolute against `base`.
    fn anchored(mut self, base: &Path) -> Self {
        for path in [
            &mut self.journal,
            &mut self.pid_file,
            &mut self.auth_token_file,
        ]
        .into_iter()
        .flatten()
        {
            *path = anchor(path, base);
        }
        if let Some(url) = &mut self.database_url {
            *url = anchor_url(url, base);
        }
        self
    }
}

/// A secret from a file: its content without the trailing newline; never empty, never printed.
fn read_secret(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(ConfigError::Setting(format!(
            "auth_token_file {} is empty: write the token in it",
            path.display()
        )));
    }
    Ok(secret.to_owned())
}

impl Settings {
    /// Refuses settings that cannot work, naming the setting and what is allowed.
    fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Setting(m));
        for (name, d) in [
            ("request_timeout", self.request_timeout),
            ("store_timeout", self.store_timeout),
            ("breaker_backoff", self.breaker_backoff),
            ("pull_interval", self.pull_interval),
            ("pull_timeout", self.pull_timeout),
            ("riemann_interval", self.riemann_interval),
            ("header_timeout", self.header_timeout),
            ("idle_timeout", self.idle_timeout),
            ("body_timeout", self.body_timeout),
        ] {
            if d.is_zero() {
                return bad(format!(
                    "{name} (--{}) is 0: it must be longer than that, e.g. 500ms or 5s",
                    name.replace('_', "-")
                ));
            }
        }
        for (name, n, least) in [
            ("body_limit", self.body_limit, 1),
            ("max_batch", self.max_batch, 1),
            ("max_response", self.max_response, 1024),
            ("max_connections", self.max_connections.unwrap_or(1), 1),
            ("pull_max_size", self.pull_max_size as usize, 1),
        ] {
            if n < least {
                return bad(format!(
                    "{name} (--{}) is {n}: at least {least}",
                    name.replace('_', "-")
                ));
            }
        }
        if self.body_limit > MAX_BODY_LIMIT {
            return bad(format!(
                "body_limit (--body-limit) is {} bytes; at most {MAX_BODY_LIMIT} (64 MiB) is allowed",
                self.body_limit
            ));
        }
        Ok(())
    }

    pub fn resilience(&self) -> crate::users::Resilience {
        crate::users::Resilience {
            journal: self.journal.clone(),
            failures: self.breaker_failures,
            backoff: self.breaker_backoff,
            handover: false,
        }
    }

    /// Where and how often to pull users, when `pull_url` is set.
    pub fn pull(&self) -> Option<crate::pull::PullConfig> {
        Some(crate::pull::PullConfig {
            url: self.pull_url.clone()?,
            interval: self.pull_interval,
            timeout: self.pull_timeout,
            max_size: self.pull_max_size,
        })
    }

    /// Where to send heartbeats and metrics, when `riemann` is set.
    pub fn riemann(&self) -> Option<crate::metrics::RiemannConfig> {
        Some(crate::metrics::RiemannConfig {
            addr: self.riemann.clone()?,
            interval: self.riemann_interval,
            host: self.riemann_host.clone(),
        })
    }
}

fn load_file(path: &Path) -> Result<Options, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Invalid {
        path: path.to_owned(),
        message: toml_message(&text, &e),
    })
}

/// Where a TOML error is and what it says, without quoting the file: the line may hold a
/// secret (`auth_token = "…"`).
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let start = before.rfind('\n').map_or(0, |n| n + 1);
            let column = before.len() - start + 1;
            // The key is named (never the value): `name = …` at the start of that line.
            let key = text[start..].split('=').next().map(str::trim).filter(|k| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
            match key {
                Some(key) => format!("line {line}, column {column} ({key}): {message}"),
                None => format!("line {line}, column {column}: {message}"),
            }
        }
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_in_the_file_are_the_files_directorys() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("usersvc.toml");
        std::fs::write(
            &path,
            "journal = \"data/usersvc.journal\"\ndatabase_url = \"sqlite://usersvc.db?cache=shared\"\npid_file = \"/run/usersvc.pid\"\n",
        )
        .expect("write");
        let s = Options {
            config: Some(path.clone()),
            ..Default::default()
        }
        .resolve()
        .expect("valid");
        let d = dir.path();
        assert_eq!(s.journal, d.join("data/usersvc.journal"));
        assert_eq!(
            s.database_url,
            format!("sqlite://{}?cache=shared", d.join("usersvc.db").display())
        );
        assert_eq!(s.pid_file.as_deref(), Some(Path::new("/run/usersvc.pid")));
        // A flag is the working directory's; a default, the file's.
        std::fs::write(&path, "").expect("write");
        let s = Options {
            config: Some(path),
            journal: Some("j".into()),
            ..Default::default()
        }
        .resolve()
        .expect("valid");
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(s.journal, cwd.join("j"));
        assert_eq!(
            s.database_url,
            format!("sqlite://{}", d.join("usersvc.db").display())
        );
        assert_eq!(anchor_url("postgres://u@h/db", d), "postgres://u@h/db");
        assert_eq!(anchor_url("sqlite::memory:", d), "sqlite::memory:");
        assert_eq!(anchor_url("sqlite:///abs.db", d), "sqlite:///abs.db");
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let example = include_str!("../../packaging/usersvc.toml");
        toml::from_str::<Options>(example).expect("packaging/usersvc.toml matches the config keys");
    }

    /// The `[default: …]` the help states for `flag`.
    fn stated_default(help: &str, flag: &str) -> String {
        let at = help
            .find(&format!("{flag} <"))
            .or_else(|| help.find(&format!("{flag}\n")))
            .unwrap_or_else(|| panic!("{flag} is not in the help"));
        let rest = &help[at..];
        let start = rest.find("[default: ").map(|i| i + "[default: ".len());
        let start = start.unwrap_or_else(|| panic!("{flag} states no default"));
        let text = &rest[start..];
        let text = &text[..text.find(']').unwrap_or(text.len())];
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The defaults are written once, in `default`; the help's `[default: …]` texts are typed
    /// by hand beside the flags, so this holds them to it.
    #[test]
    fn the_help_states_the_defaults_the_settings_use() {
        use clap::CommandFactory;
        let help = Cli::command()
            .term_width(1000)
            .render_long_help()
            .to_string();
        let s = Options::default()
            .resolve()
            .expect("the defaults are valid");
        let duration = |flag: &str| {
            humantime::parse_duration(&stated_default(&help, flag))
                .unwrap_or_else(|e| panic!("{flag}: {e}"))
        };
        let number = |flag: &str| stated_default(&help, flag).parse::<u64>().ok();
        assert_eq!(stated_default(&help, "--listen"), s.listen);
        assert!(
            s.database_url
                .ends_with(stated_default(&help, "--database-url").trim_start_matches("sqlite://"))
        );
        assert_eq!(number("--body-limit"), Some(s.body_limit as u64));
        assert_eq!(number("--max-batch"), Some(s.max_batch as u64));
        assert_eq!(number("--max-response"), Some(s.max_response as u64));
        assert_eq!(number("--pull-max-size"), Some(s.pull_max_size));
        assert_eq!(
            number("--breaker-failures"),
            Some(u64::from(s.breaker_failures))
        );
        assert_eq!(duration("--header-timeout"), s.header_timeout);
        assert_eq!(duration("--idle-timeout"), s.idle_timeout);
        assert_eq!(duration("--body-timeout"), s.body_timeout);
        assert_eq!(duration("--request-timeout"), s.request_timeout);
        assert_eq!(duration("--store-timeout"), s.store_timeout);
        assert_eq!(duration("--breaker-backoff"), s.breaker_backoff);
        assert_eq!(duration("--riemann-interval"), s.riemann_interval);
        assert_eq!(duration("--pull-interval"), s.pull_interval);
        assert_eq!(duration("--pull-timeout"), s.pull_timeout);
        assert!(s.journal.ends_with(stated_default(&help, "--journal")));
    }

    #[test]
    fn flags_win_over_file_over_defaults() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1\"\nrequest_timeout = \"2s\"\nlog_format = \"json\"\n",
        )
        .expect("write");
        let s = Options {
            config: Some(path.clone()),
            listen: Some("127.0.0.1:2".into()),
            ..Default::default()
        }
        .resolve()
        .expect("valid");
        assert_eq!(s.listen, "127.0.0.1:2");
        assert_eq!(s.request_timeout, Duration::from_secs(2));
        assert_eq!(s.log_format, LogFormat::Json);
        // The default database sits where usersvc is started (no path in a file to anchor it).
        assert!(
            s.database_url.starts_with("sqlite:///") && s.database_url.ends_with("/usersvc.db"),
            "{}",
            s.database_url
        );
        assert_eq!(s.store_timeout, Duration::from_secs(2));

        std::fs::write(&path, "store_timeout = \"soon\"\n").expect("write");
        let err = Options {
            config: Some(path.clone()),
            ..Default::default()
        }
        .resolve()
        .expect_err("not a duration");
        assert!(
            err.to_string().contains("store_timeout") && err.to_string().contains("500ms"),
            "{err}"
        );

        // A TOML error names the line, never echoes it: it may hold the token.
        std::fs::write(&path, "auth_token = \"s3cret-token\" oops\n").expect("write");
        let err = Options {
            config: Some(path.clone()),
            ..Default::default()
        }
        .resolve()
        .expect_err("bad TOML");
        assert!(
            err.to_string().contains("line 1") && !err.to_string().contains("s3cret"),
            "{err}"
        );

        // Settings that cannot work fail at start, named.
        std::fs::write(&path, "pull_interval = \"0s\"\n").expect("write");
        let err = Options {
            config: Some(path.clone()),
            ..Default::default()
        }
        .resolve()
        .expect_err("zero interval");
        assert!(
            err.to_string()
                .starts_with("pull_interval (--pull-interval) is 0"),
            "{err}"
        );

        // The token from a file, its newline dropped; not with auth_token too.
        let token = dir.join("token");
        std::fs::write(&token, "from-file\n").expect("write");
        let s = Options {
            auth_token_file: Some(token.clone()),
            ..Default::default()
        }
        .resolve()
        .expect("valid");
        assert_eq!(s.auth_token.as_deref(), Some("from-file"));
        let err = Options {
            auth_token_file: Some(token),
            auth_token: Some("x".into()),
            ..Default::default()
        }
        .resolve()
        .expect_err("both");
        assert!(err.to_string().contains("both set"), "{err}");

        std::fs::write(&path, "lisen = \"x\"\n").expect("write");
        let err = Options {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .expect_err("typo must be refused");
        assert!(err.to_string().contains("lisen"), "{err}");
    }
}
