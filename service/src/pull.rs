//! Pulls users from an upstream: every interval, GET a JSON array of user objects and upsert the
//! ones that changed, in one transaction. A bad payload, an HTTP error, a timeout or an oversized
//! body is logged and counted and changes nothing.

use crate::doc::DocText;
use crate::users::validate_text;
use crate::users::{UserError, Users};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Where and how often to pull users (keys of the config file as the flags, with underscores).
#[derive(clap::Args, serde::Serialize, serde::Deserialize, Clone)]
#[command(next_help_heading = "Pulling users")]
pub struct PullSettings {
    /// Pull users from this URL (a JSON array of user objects with ids) every --pull-interval
    #[arg(
        long,
        env = "USERSVC_PULL_URL",
        value_name = "URL",
        global = true,
        hide_env_values = true
    )]
    pub pull_url: Option<String>,

    /// How often to pull
    #[arg(long, env = "USERSVC_PULL_INTERVAL", value_name = "DURATION", default_value = "1m",
        value_parser = toolkit_core::duration::positive, global = true)]
    #[serde(with = "toolkit_core::duration")]
    pub pull_interval: Duration,

    /// Longest one pull may take
    #[arg(long, env = "USERSVC_PULL_TIMEOUT", value_name = "DURATION", default_value = "10s",
        value_parser = toolkit_core::duration::positive, global = true)]
    #[serde(with = "toolkit_core::duration")]
    pub pull_timeout: Duration,

    /// Largest pulled payload in bytes; a larger one is refused whole
    #[arg(long, env = "USERSVC_PULL_MAX_SIZE", value_name = "BYTES", default_value_t = 16 << 20,
        value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub pull_max_size: u64,
}

impl PullSettings {
    /// What to pull, when `--pull-url` is set.
    pub fn config(&self) -> Option<PullConfig> {
        Some(PullConfig {
            url: self.pull_url.clone()?,
            interval: self.pull_interval,
            timeout: self.pull_timeout,
            max_size: self.pull_max_size,
        })
    }
}

#[derive(Debug, Clone)]
pub struct PullConfig {
    pub url: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub max_size: u64,
}

#[derive(Debug, Default)]
pub struct PullStats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Users written because they were new or different.
    pub changed: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("fetching {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("upstream answered HTTP {0}")]
    Status(u16),
    #[error("bad payload: {0}")]
    Payload(String),
    #[error("storing the pulled users: {0}")]
    Store(#[source] UserError),
}

/// Fetches and validates the whole payload; any problem rejects all of it. Users are kept as
/// text, parsed one at a time: about twice the payload in memory, however it ends.
fn fetch(cfg: &PullConfig) -> Result<Vec<(String, DocText)>, PullError> {
    // The URL may carry credentials: never in an error, a log line or /health.
    let fetch_err = |message: String| PullError::Fetch {
        url: toolkit_core::redact::text(&cfg.url),
        message: toolkit_core::redact::text(&message),
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(cfg.timeout))
        .build()
        .into();
    let mut resp = agent
        .get(&cfg.url)
        .header("Accept", "application/json")
        .call()
        .map_err(|e| fetch_err(e.to_string()))?;
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(PullError::Status(status));
    }
    // Sized by Content-Length when the upstream sends one: a growing buffer would double past
    // the payload.
    let declared = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&n| n <= cfg.max_size);
    let mut body = Vec::with_capacity(declared.unwrap_or(0) as usize);
    std::io::Read::read_to_end(
        &mut resp.body_mut().with_config().limit(cfg.max_size).reader(),
        &mut body,
    )
    .map_err(|e| fetch_err(e.to_string()))?;
    validate_text(&body).map_err(|e| PullError::Payload(e.0))
}

/// One pull: fetch, then write what changed in one transaction. Returns how many changed.
pub async fn pull_once(cfg: &PullConfig, users: &Users) -> Result<usize, PullError> {
    let fetched = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || fetch(&cfg))
            .await
            .map_err(|e| PullError::Fetch {
                url: String::new(),
                message: e.to_string(),
            })??
    };
    let changed = users.changed(fetched);
    let n = changed.len();
    if n > 0 {
        users.put_texts(changed).await.map_err(PullError::Store)?;
    }
    Ok(n)
}

/// Pulls every interval until the runtime stops.
pub async fn run(cfg: PullConfig, users: Users, stats: std::sync::Arc<PullStats>) {
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match pull_once(&cfg, &users).await {
            Ok(n) => {
                stats.ok.fetch_add(1, Ordering::Relaxed);
                stats.changed.fetch_add(n as u64, Ordering::Relaxed);
                if let Ok(mut e) = stats.last_error.lock() {
                    *e = None;
                }
                if n > 0 {
                    tracing::info!(changed = n, url = %toolkit_core::redact::text(&cfg.url), "pulled users");
                }
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                let e = toolkit_core::redact::text(&e.to_string());
                tracing::warn!(error = %e, url = %toolkit_core::redact::text(&cfg.url), "pull failed; nothing changed");
                if let Ok(mut last) = stats.last_error.lock() {
                    *last = Some(e);
                }
            }
        }
    }
}
