//! Configuration: command-line flags, each with a `USERSVC_*` environment variable, over an
//! optional TOML file, over defaults. Precedence: flag > environment > file > default.
//!
//! Each subsystem owns its settings, a `clap::Args` group with its defaults and bounds
//! (`ServerSettings`, `StoreSettings`, `ApiSettings`, `PullSettings`, `RiemannSettings`, and
//! the log's here); [`Settings`] flattens them into the one command line and the one file users
//! see. A file's value goes through its flag's own parser, so a bound is written once and holds
//! for all three layers.

mod layers;

use self::layers::{from_environment, keys_of, overlay_file, read_secret};
use crate::api::ApiSettings;
use crate::lifecycle::ServerSettings;
use crate::metrics::RiemannSettings;
use crate::pull::PullSettings;
use crate::setting_paths::{PATH_KEYS, anchor_value};
use crate::users::StoreSettings;
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
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

#[derive(Parser)]
#[command(
    name = "usersvc",
    version,
    about = "A JSON-RPC 2.0 over HTTP user service (SQLite by default, PostgreSQL to share data)",
    after_help = AFTER_HELP
)]
struct Cli {
    /// TOML file with any of the settings below (keys as the long flags, with underscores); paths
    /// in it are relative to its directory, paths in flags and the environment to the working
    /// directory
    #[arg(long, env = "USERSVC_CONFIG", value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum Command {
    /// Serve JSON-RPC over HTTP (the default when no command is given)
    Serve,
    /// Load a JSON array of user objects from FILE in one transaction, then exit
    ///
    /// It uses the store's settings (--database-url, --store-timeout) and --config: the file goes
    /// straight to the database, never through a running server or the journal. The serving
    /// settings listed below are accepted, as with every command, and ignored. A user that cannot
    /// be imported is
    /// named by its index in the array, counting from 0; nothing is imported then.
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
        #[arg(long, value_name = "DURATION", value_parser = toolkit_core::duration::positive, default_value = "30s")]
        timeout: Duration,
    },
    /// The writes queued in the journal (--journal) and the pieces in its quarantine: list
    /// them, put chosen ones back, or discard them
    ///
    /// A piece is what replay could not use: damaged bytes (named by the write ids still in
    /// them) or a write the store refused on replay. /health says 503 while any is there.
    Journal {
        #[command(subcommand)]
        action: Option<crate::journal_command::JournalAction>,
    },
    /// Print the completion script for SHELL, e.g.
    /// `usersvc completions bash > ~/.local/share/bash-completion/completions/usersvc`
    /// (`make install` installs them for bash, zsh and fish)
    Completions { shell: cli_docs::Shell },
    /// Write the man pages into DIR (`make install` does)
    #[command(hide = true)]
    ManPages { dir: PathBuf },
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

/// Every setting, grouped by the subsystem that uses it and flattened into one command line and
/// one file: a flag's long name, with underscores, is its key in the TOML file, and
/// `USERSVC_` and that key in capitals its environment variable. Each group writes its defaults
/// once, in its flags' `default_value`s, and the help shows them from there.
#[derive(Args, Serialize, Deserialize, Clone)]
pub struct Settings {
    #[command(flatten)]
    #[serde(flatten)]
    pub server: ServerSettings,
    #[command(flatten)]
    #[serde(flatten)]
    pub store: StoreSettings,
    #[command(flatten)]
    #[serde(flatten)]
    pub api: ApiSettings,
    #[command(flatten)]
    #[serde(flatten)]
    pub pull: PullSettings,
    #[command(flatten)]
    #[serde(flatten)]
    pub riemann: RiemannSettings,
    #[command(flatten)]
    #[serde(flatten)]
    pub log: LogSettings,
}

/// How the process logs.
#[derive(Args, Serialize, Deserialize, Clone)]
#[command(next_help_heading = "Logging")]
pub struct LogSettings {
    /// Log line format on stderr
    #[arg(
        long,
        env = "USERSVC_LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,

    /// Log filter, e.g. info, debug, usersvc::access=debug (a line per call; failed calls are at
    /// info), sqlx=warn
    #[arg(
        long,
        env = "USERSVC_LOG",
        value_name = "FILTER",
        default_value = "info",
        global = true
    )]
    pub log: String,
}

#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl std::fmt::Debug for Settings {
    /// Never a secret: the database URL's password is masked, the token only said to be set.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.server.listen)
            .field(
                "database_url",
                &toolkit_core::redact::text(&self.store.database_url),
            )
            .field("journal", &self.store.journal)
            .field("auth_token", &self.api.auth_token.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
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
    #[error("cannot read auth_token_file {path}: {source}")]
    Secret {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Settings that cannot work together, whichever layer set them.
    #[error("{0}")]
    Setting(String),
}

/// The command line as given: what to do, and the settings before the config file is read.
pub struct Invocation {
    pub command: Command,
    config: Option<PathBuf>,
    /// The command line's settings (defaults included) as keys and values.
    given: serde_json::Map<String, serde_json::Value>,
    /// The settings a flag or an environment variable set: they win over the file.
    explicit: BTreeSet<String>,
}

impl Invocation {
    /// The command line as clap describes it: for completions and man pages.
    pub fn command() -> clap::Command {
        Cli::command()
    }

    /// This process's arguments; `--help`, `--version` and usage errors print and exit as clap
    /// does (exit 2 for a usage error).
    pub fn parse() -> Self {
        Self::try_parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// `args` (the program's name first) and the environment.
    pub fn try_parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        // --version says which release is running, as `/version` does.
        let version = crate::release::Release::of_running_exe().version_line();
        let matches = Cli::command()
            .version(version)
            .try_get_matches_from(&args)
            .map_err(|e| from_environment(e, &args))?;
        let cli = Cli::from_arg_matches(&matches)?;
        let keys =
            keys_of(&cli.settings).map_err(|e| clap::Error::raw(clap::error::ErrorKind::Io, e))?;
        let explicit = keys
            .keys()
            .filter(|key| {
                matches!(
                    matches.value_source(key),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                )
            })
            .cloned()
            .collect();
        Ok(Self {
            command: cli.command.unwrap_or(Command::Serve),
            config: cli.config,
            given: keys,
            explicit,
        })
    }

    /// Flags (with their environment variables) over the file over the defaults, checked.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        // Paths in the file mean the same file wherever usersvc is started from: they are the
        // file's directory's, and so are the defaults' (usersvc.db, usersvc.journal); flags and
        // the environment are the working directory's.
        let home = match &self.config {
            Some(path) => cwd
                .join(path)
                .parent()
                .map_or_else(|| cwd.clone(), Path::to_path_buf),
            None => cwd.clone(),
        };
        let mut keys = self.given.clone();
        if let Some(path) = &self.config {
            overlay_file(&self.explicit, path, &mut keys)?;
        }
        for key in PATH_KEYS {
            if let Some(serde_json::Value::String(value)) = keys.get_mut(*key) {
                let base = if self.explicit.contains(*key) {
                    &cwd
                } else {
                    &home
                };
                *value = anchor_value(key, value, base);
            }
        }
        let mut settings: Settings =
            serde_json::from_value(keys.into()).map_err(|e| ConfigError::Setting(e.to_string()))?;
        let api = &mut settings.api;
        api.auth_token = api.auth_token.take().filter(|t| !t.is_empty());
        if let Some(path) = &api.auth_token_file {
            if api.auth_token.is_some() {
                return Err(ConfigError::Setting(
                    "auth_token and auth_token_file are both set: keep one (the file)".into(),
                ));
            }
            api.auth_token = Some(read_secret(path)?);
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setting_paths::{env_of, flag_of};

    /// `usersvc ARGS` resolved (no command: serve).
    fn resolve(args: &[&str]) -> Result<Settings, ConfigError> {
        let args = std::iter::once("usersvc").chain(args.iter().copied());
        Invocation::try_parse_from(args)
            .expect("valid command line")
            .settings()
    }

    /// `usersvc --config FILE` with `text` in FILE (in a new directory).
    fn with_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("usersvc.toml");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn paths_in_the_file_are_the_files_directorys() {
        let (dir, path) = with_file(
            "journal = \"data/usersvc.journal\"\ndatabase_url = \"sqlite://usersvc.db?cache=shared\"\npid_file = \"/run/usersvc.pid\"\n",
        );
        let config = path.to_str().expect("utf-8");
        let s = resolve(&["--config", config]).expect("valid");
        let d = dir.path();
        assert_eq!(s.store.journal, d.join("data/usersvc.journal"));
        assert_eq!(
            s.store.database_url,
            format!("sqlite://{}?cache=shared", d.join("usersvc.db").display())
        );
        assert_eq!(
            s.server.pid_file.as_deref(),
            Some(Path::new("/run/usersvc.pid"))
        );
        // A flag is the working directory's; a default, the file's.
        std::fs::write(&path, "").expect("write");
        let s = resolve(&["--config", config, "--journal", "j"]).expect("valid");
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(s.store.journal, cwd.join("j"));
        assert_eq!(
            s.store.database_url,
            format!("sqlite://{}", d.join("usersvc.db").display())
        );
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/usersvc.toml");
        let s = resolve(&["--config", example]).expect("packaging/usersvc.toml is valid");
        assert_eq!(s.log.log_format, LogFormat::Json);
        // Its paths are relative to the file: shared/ when the deployer keeps it there.
        let dir = Path::new(example).parent().expect("its directory");
        assert_eq!(s.store.journal, dir.join("usersvc.journal"));
        assert_eq!(
            s.store.database_url,
            format!("sqlite://{}", dir.join("usersvc.db").display())
        );
    }

    /// The contract's defaults (DESIGN.md), and the rule that makes one name of a setting's
    /// flag, environment variable and key: `upgrade` and the file rely on it.
    #[test]
    fn defaults_and_names_follow_the_contract() {
        let s = resolve(&[]).expect("the defaults are valid");
        assert_eq!(s.server.listen, "127.0.0.1:8080");
        assert!(
            s.store.database_url.starts_with("sqlite:///")
                && s.store.database_url.ends_with("/usersvc.db"),
            "{}",
            s.store.database_url
        );
        assert_eq!(s.log.log_format, LogFormat::Text);
        assert_eq!(s.riemann.riemann_interval, Duration::from_secs(5));
        let keys = keys_of(&s).expect("keys");
        let command = Cli::command();
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if !keys.contains_key(id) && id != "config" {
                continue;
            }
            assert_eq!(arg.get_long().map(|l| format!("--{l}")), Some(flag_of(id)));
            let env = arg.get_env().and_then(|e| e.to_str());
            assert_eq!(env, Some(env_of(id).as_str()), "{id}");
        }
        // The help states what the connection limit's default is computed from.
        let help = Cli::command().render_long_help().to_string();
        let reserved = crate::lifecycle::RESERVED_FDS;
        assert!(help.contains(&format!("less {reserved}]")), "{help}");
    }

    #[test]
    fn flags_win_over_file_over_defaults() {
        let (_dir, path) = with_file(
            "listen = \"127.0.0.1:1\"\nrequest_timeout = \"2s\"\nlog_format = \"json\"\n",
        );
        let config = path.to_str().expect("utf-8");
        let s = resolve(&["--config", config, "--listen", "127.0.0.1:2"]).expect("valid");
        assert_eq!(s.server.listen, "127.0.0.1:2");
        assert_eq!(s.api.request_timeout, Duration::from_secs(2));
        assert_eq!(s.log.log_format, LogFormat::Json);
        assert_eq!(s.store.store_timeout, Duration::from_secs(2));
        // After a subcommand too (the flags are global).
        let after = Invocation::try_parse_from([
            "usersvc",
            "--config",
            config,
            "import",
            "--listen",
            "127.0.0.1:3",
            "u.json",
        ])
        .expect("valid");
        assert!(matches!(after.command, Command::Import { .. }));
        assert_eq!(
            after.settings().expect("valid").server.listen,
            "127.0.0.1:3"
        );
        // A flag with an optional value never swallows the command after it.
        let public =
            Invocation::try_parse_from(["usersvc", "--metrics-public", "import", "u.json"])
                .expect("valid");
        assert!(matches!(public.command, Command::Import { .. }));
        assert!(public.settings().expect("valid").api.metrics_public);
        let off = resolve(&["--metrics-public=false"]).expect("valid");
        assert!(!off.api.metrics_public);
    }

    /// A file's value is held to its flag's parser: its type and bounds, named by line and key,
    /// never echoing the line (it may hold the token).
    #[test]
    fn a_bad_file_is_refused_by_line_and_key() {
        let refused = |text: &str| {
            let (_dir, path) = with_file(text);
            let config = path.to_str().expect("utf-8").to_owned();
            resolve(&["--config", &config]).expect_err(text).to_string()
        };
        let err = refused("\n store_timeout = \"soon\"\n");
        assert!(
            err.contains("line 2 (store_timeout)") && err.contains("500ms"),
            "{err}"
        );
        let err = refused("pull_interval = \"0s\"\n");
        assert!(
            err.contains("line 1 (pull_interval)") && err.contains("longer than 0"),
            "{err}"
        );
        let err = refused("breaker_failures = 0\n");
        assert!(
            err.contains("(breaker_failures)") && err.contains("not in 1.."),
            "{err}"
        );
        let err = refused("workers = 0\n");
        assert!(err.contains("(workers)"), "{err}");
        let err = refused("body_limit = 67108865\n");
        assert!(err.contains("(body_limit)"), "{err}");
        let err = refused("max_response = 10\n");
        assert!(err.contains("(max_response)"), "{err}");
        let err = refused("log_format = \"xml\"\n");
        assert!(err.contains("(log_format)") && err.contains("xml"), "{err}");
        let err = refused("listen = 8080\n");
        assert!(err.contains("(listen)") && err.contains("string"), "{err}");
        let err = refused("lisen = \"x\"\n");
        assert!(
            err.contains("line 1 (lisen)") && err.contains("no such setting"),
            "{err}"
        );
        let err = refused("config = \"other.toml\"\n");
        assert!(err.contains("cannot name another"), "{err}");
        let err = refused("auth_token = \"s3cret-token\" oops\n");
        assert!(err.contains("line 1") && !err.contains("s3cret"), "{err}");
        let err = refused("auth_token = 987654321\n");
        assert!(
            err.contains("(auth_token)") && !err.contains("987654321"),
            "{err}"
        );
        let err = refused("database_url = [\"postgres://u:pw-7f3e9a@db/x\"]\n");
        assert!(
            err.contains("(database_url)") && !err.contains("pw-7f3e9a"),
            "{err}"
        );
        // A token pasted on a line of its own is never taken for a key.
        let err = refused("listen = \"127.0.0.1:1\"\n9f86d081884c7d65\n");
        assert!(
            err.contains("line 2") && !err.contains("9f86d081884c7d65"),
            "{err}"
        );
        let err = refused("listen = \"127.0.0.1:1\"\ndG9rZW4tc2VjcmV0=\n");
        assert!(
            err.contains("line 2") && !err.contains("dG9rZW4tc2VjcmV0"),
            "{err}"
        );
        let err = refused("[store]\nlisten = \"x\"\n");
        assert!(err.contains("line 1 (store): no such setting"), "{err}");
    }

    #[test]
    fn the_token_comes_from_one_place() {
        let dir = tempfile::tempdir().expect("temp dir");
        let token = dir.path().join("token");
        std::fs::write(&token, "from-file\n").expect("write");
        let file = token.to_str().expect("utf-8");
        let s = resolve(&["--auth-token-file", file]).expect("valid");
        assert_eq!(s.api.auth_token.as_deref(), Some("from-file"));
        assert!(!format!("{s:?}").contains("from-file"), "{s:?}");
        let err = resolve(&["--auth-token-file", file, "--auth-token", "x"]).expect_err("both");
        assert!(err.to_string().contains("both set"), "{err}");
        std::fs::write(&token, "\n").expect("write");
        let err = resolve(&["--auth-token-file", file]).expect_err("empty");
        assert!(err.to_string().contains("is empty"), "{err}");
        let missing = dir.path().join("nope");
        let missing = missing.to_str().expect("utf-8");
        let err = resolve(&["--auth-token-file", missing]).expect_err("missing");
        assert!(
            err.to_string().starts_with("cannot read auth_token_file"),
            "{err}"
        );
        // An empty token is no token.
        let s = resolve(&["--auth-token", ""]).expect("valid");
        assert_eq!(s.api.auth_token, None);
    }
}
