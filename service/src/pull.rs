//! Pulls users from an upstream: every interval, GET a JSON array of user objects and upsert the
//! ones that changed, in one transaction. A bad payload, an HTTP error, a timeout or an oversized
//! body is logged and counted and changes nothing.

use crate::users::{UserError, Users};
use crate::validate::{NewUser, validate_list};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    #[error("payload is not a JSON array of users: {0}")]
    Payload(String),
    #[error("storing the pulled users: {0}")]
    Store(#[source] UserError),
}

/// Fetches and validates the whole payload; any problem rejects all of it.
fn fetch(cfg: &PullConfig) -> Result<Vec<NewUser>, PullError> {
    let fetch_err = |message: String| PullError::Fetch {
        url: cfg.url.clone(),
        message,
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
    let body = resp
        .body_mut()
        .with_config()
        .limit(cfg.max_size)
        .read_to_vec()
        .map_err(|e| fetch_err(e.to_string()))?;
    let list: Vec<serde_json::Value> =
        serde_json::from_slice(&body).map_err(|e| PullError::Payload(e.to_string()))?;
    validate_list(list, true).map_err(|e| PullError::Payload(e.0))
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
        users.put_many(changed).await.map_err(PullError::Store)?;
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
                    tracing::info!(changed = n, url = %cfg.url, "pulled users");
                }
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, url = %cfg.url, "pull failed; nothing changed");
                if let Ok(mut last) = stats.last_error.lock() {
                    *last = Some(e.to_string());
                }
            }
        }
    }
}
