//! `usersvc`: users as JSON documents behind a JSON-RPC 2.0 over HTTP API.
//!
//! Layers, outermost first: `http` (axum middleware: metrics, bearer token, content type, body
//! limit) → `rpc` (the JSON-RPC envelope, ours; the request deadline) → `methods` (params →
//! calls) → `users` (the write path, breaker, journal) → `snapshot` (reads) and `store` (sqlx,
//! SQLite or PostgreSQL). [`serve`] runs it all behind a socket; the same dispatcher answers
//! in-process:
//!
//! ```
//! use service::{Api, Release, Reply, Resilience, Users, handle_body};
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let runtime = tokio::runtime::Runtime::new()?;
//! runtime.block_on(async {
//!     let url = format!("sqlite://{}", dir.path().join("users.db").display());
//!     let resilience = Resilience {
//!         journal: dir.path().join("usersvc.journal"),
//!         failures: 3,
//!         backoff: Duration::from_secs(1),
//!         handover: false,
//!     };
//!     let users = Users::open(&url, Duration::from_secs(2), &resilience).await?;
//!     let api = Api::new(users.clone(), &Release::of_running_exe());
//!
//!     let put = br#"{"jsonrpc":"2.0","method":"put_user","params":{"user":{"id":"ada"}},"id":1}"#;
//!     let get = br#"{"jsonrpc":"2.0","method":"get_user","params":["ada"],"id":2}"#;
//!     handle_body(&api, put).await;
//!     let Reply::Body(body) = handle_body(&api, get).await else { unreachable!() };
//!     let answer: serde_json::Value = serde_json::from_slice(&body)?;
//!     let (id, user) = (answer["id"].as_i64(), answer["result"]["id"].as_str());
//!     assert_eq!((id, user), (Some(2), Some("ada")));
//!     users.close().await;
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })
//! # }
//! ```

// Leaves: they import nothing of the crate.
mod atomic_file;
pub mod doc;
mod release;
mod setting_paths;
mod tasks;

// Subsystems, bottom up: each imports only those above it (see ARCHITECTURE.md). Private: what
// the binary, the integration tests and the example above use is re-exported below; `store` and
// `doc` are public for the tests that drive the store directly (the writer, the local copy).
mod api;
mod lifecycle;
mod metrics;
mod pull;
pub mod store;
mod users;

mod config;
mod import;
mod journal_command;
#[cfg(test)]
mod tidy;

use std::sync::Arc;
use std::time::Duration;

pub use api::{Api, Reply, handle_body};
pub use config::{Command, Invocation, LogFormat, Settings};
pub use import::import;
pub use journal_command::{JournalAction, run as run_journal_command};
pub use lifecycle::{Inherited, ListenError, UpgradeError, Upgraded, is_alive, upgrade};
pub use release::Release;
pub use users::{MAX_DEPTH, OpenError, Resilience, Users};

/// Every file and socket usersvc creates is its user's alone (files 0600, directories 0700),
/// whatever umask it was started with: they hold users' data. Call it first in `main`.
pub fn keep_files_private() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot write the pid file {path}: {source}")]
    PidFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot read {path}: {source}")]
    ReadImport {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    BadImport { path: String, message: String },
    #[error(transparent)]
    Open(#[from] users::OpenError),
}

/// Opens the store, loads the snapshot and serves on the inherited socket (systemd's, or the one
/// an upgrading server handed over) or a fresh bind of `--listen`, until SIGTERM or SIGINT or
/// until an upgrade hands the socket on; then drains and returns.
///
/// On an error before it served, `inherited` still holds the channel to whoever started this
/// server: pass the message to [`Inherited::failed`].
pub async fn serve(settings: Settings, inherited: &mut Inherited) -> Result<(), ServeError> {
    let store = &settings.store;
    let resilience = store.resilience(inherited.replaces_a_server());
    let users = users::Users::open(&store.database_url, store.store_timeout, &resilience).await?;
    tracing::info!(users = users.count(), database = %toolkit_core::redact::text(&store.database_url), "store ready");
    let pull_stats = settings.pull.config().map(|cfg| {
        let stats = Arc::new(pull::PullStats::default());
        tracing::info!(url = %toolkit_core::redact::text(&cfg.url), interval = %humantime::format_duration(cfg.interval), "pulling users");
        users
            .tasks()
            .spawn("pull", pull::run(cfg, users.clone(), stats.clone()));
        stats
    });
    let metrics = Arc::new(metrics::Metrics::default());
    let release = release::Release::of_running_exe();
    let probe = settings.riemann.config().map(|cfg| {
        tracing::info!(riemann = %cfg.addr, interval = %humantime::format_duration(cfg.interval), "reporting to Riemann");
        metrics::start_reporter(cfg, metrics.clone(), users.clone(), &release)
    });
    let api = Arc::new(api::Api::new(users.clone(), &release).with_pull(pull_stats.clone()));
    let exposition = Arc::new(api::Exposition::new(api::Sources {
        users: users.clone(),
        pull: pull_stats.clone(),
        release: release.clone(),
    }));
    let app = api::Http::new(
        api,
        api::HttpConfig {
            metrics,
            exposition,
            pull: pull_stats,
            settings: settings.api.clone(),
        },
    );
    let (listener, origin) = inherited.listener(&settings.server.listen)?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() && settings.api.auth_token.is_none() {
        tracing::warn!(%addr, "listening beyond loopback without a token: anyone who can reach this port can read and write every user; set auth_token_file");
    }
    // Fired when an upgrade has handed the socket on: this server then stops accepting.
    let (handed_tx, handed_rx) = tokio::sync::oneshot::channel::<lifecycle::Successor>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Option<lifecycle::Successor>>();
    let stopping = users.clone();
    let request_timeout = settings.api.request_timeout;
    let stop = async move {
        let handed_over = async {
            match handed_rx.await {
                Ok(successor) => successor,
                // No control socket (no pid file): only a signal stops this server.
                Err(_) => std::future::pending().await,
            }
        };
        let successor = tokio::select! {
            () = shutdown_signal() => None,
            s = handed_over => Some(s),
        };
        // Writes still waiting for a previous server's journal would hold up the drain.
        stopping.stop_waiting_for_journal();
        shutdown_deadline(request_timeout.saturating_add(SHUTDOWN_GRACE));
        // First, so a stalled store or client cannot keep it from being saved.
        stopping.save_copy().await;
        let _ = stop_tx.send(successor);
    };
    // A duplicate of the socket for a successor, taken before the accept loop owns it.
    let dup = {
        use std::os::fd::AsFd;
        listener.as_fd().try_clone_to_owned()?
    };
    let limits = settings.server.limits();
    let answer = move |req| app.call(req);
    let accepting = tokio::spawn(lifecycle::serve(listener, answer, limits, stop));
    // Tests and scripts read the bound address (port 0 picks one) from this line.
    // Plain values, absent outside a release: `jq .revision` and log filters read them as is.
    tracing::info!(%addr, socket = origin.as_str(), revision = release.revision.as_deref(), release = release.name.as_deref(), "listening on http://{addr}/");
    // Without a pid file there is no control socket, so no upgrade: `upgrade` finds servers by
    // it. Bound only now, ready to serve: the path must never lead to a server that failed.
    match &settings.server.pid_file {
        Some(pid_file) => lifecycle::listen_control(pid_file, dup, handed_tx)?,
        None => drop((dup, handed_tx)),
    }
    announce_ready(&settings, inherited.take_upgrade_channel()).await?;
    accepting
        .await
        .map_err(|e| std::io::Error::other(format!("the accept loop failed: {e}")))?;
    if let Ok(Some(successor)) = stop_rx.await {
        tracing::info!(
            new_pid = successor.pid,
            "drained; the new server serves and takes the journal over once this one has closed it"
        );
    }
    tracing::info!("in-flight requests done; finishing the writes taken, closing the store");
    users.close().await;
    if let Some(probe) = probe {
        // Flush what is queued, but never hold up the exit for long, even when the Riemann
        // server stalls mid-answer.
        let flush = tokio::task::spawn_blocking(move || probe.shutdown(Duration::from_secs(2)));
        match tokio::time::timeout(Duration::from_secs(3), flush).await {
            Ok(Ok(stats)) => tracing::info!(
                sent = stats.sent,
                dropped = stats.dropped,
                "Riemann probe flushed"
            ),
            _ => tracing::warn!("Riemann did not take the last events in time; leaving them"),
        }
    }
    if let Some(pid_file) = &settings.server.pid_file {
        lifecycle::remove_if_ours(pid_file, std::process::id());
    }
    Ok(())
}

/// How long shutdown may take beyond `--request-timeout` (the drain's bound) before the process
/// exits anyway: closing the store, the journal and Riemann get this much.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Exits the process `after` from now if it is still running: a stalled store, client or
/// Riemann server never keeps a stopped server alive. A thread of its own, so a stuck runtime
/// cannot hold it up.
fn shutdown_deadline(after: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        // Straight to stderr: the log's writer thread may not get to a line before the exit.
        eprintln!(
            "usersvc: shutdown did not finish within {}; exiting now (the local copy was saved when it began)",
            humantime::format_duration(after)
        );
        std::process::exit(1);
    });
}

/// Says this server serves: the pid file, systemd (`READY=1`, `MAINPID=`), and the process that
/// started it, if any. (A server started by an upgrade sees what the old one wrote meanwhile
/// once it takes the journal over: `users`.)
async fn announce_ready(
    settings: &Settings,
    channel: Option<lifecycle::UpgradeChannel>,
) -> Result<(), ServeError> {
    let pid = std::process::id();
    if let Some(path) = &settings.server.pid_file {
        lifecycle::write_pid_file(path, pid).map_err(|source| ServeError::PidFile {
            path: path.display().to_string(),
            source,
        })?;
    }
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(&[
            sd_notify::NotifyState::MainPid(pid),
            sd_notify::NotifyState::Ready,
        ])
    {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
    if let Some(mut channel) = channel {
        channel.ready();
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
}
