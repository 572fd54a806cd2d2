//! `[canary]` (how much worse the new revision may do while `deploy --canary` watches) and
//! `[riemann]` (where deploy events go, and the canary's figures come from).

use super::Problem;
use serde::Deserialize;
use std::time::Duration;

impl Canary {
    pub(super) fn check(&self) -> Result<(), Problem> {
        let ratio = |r: f64| r >= 1.0 && r.is_finite();
        if !(ratio(self.max_error_ratio) && ratio(self.max_latency_ratio)) {
            return Err(Problem::Canary(
                "max_error_ratio and max_latency_ratio must be numbers of at least 1",
            ));
        }
        if !(self.min_error_rate > 0.0 && self.min_error_rate.is_finite())
            || self.min_latency.is_zero()
        {
            return Err(Problem::Canary(
                "min_error_rate and min_latency must be above 0",
            ));
        }
        if self.interval.is_zero() {
            return Err(Problem::Canary("interval must be above 0"));
        }
        Ok(())
    }
}

/// `[canary]`: limits on how much worse the new revision may do than the hosts still on the
/// old one, in usersvc's Riemann events, while `deploy --canary D` watches the first batch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// New errors/s over old errors/s beyond this stops the deploy [default: 2]
    #[serde(default = "default_error_ratio")]
    pub max_error_ratio: f64,
    /// New latency p99 over old beyond this stops the deploy [default: 1.5]
    #[serde(default = "default_latency_ratio")]
    pub max_latency_ratio: f64,
    /// Error rates below this count as this, on both sides [default: 0.1 (errors/s)]
    #[serde(default = "default_min_error_rate")]
    pub min_error_rate: f64,
    /// Latencies below this count as this, on both sides [default: 5ms]
    #[serde(
        default = "default_min_latency",
        deserialize_with = "toolkit_core::duration::deserialize"
    )]
    pub min_latency: Duration,
    /// Between looks (health gate and Riemann) [default: 5s]
    #[serde(
        default = "default_canary_interval",
        deserialize_with = "toolkit_core::duration::deserialize"
    )]
    pub interval: Duration,
}

impl Default for Canary {
    fn default() -> Self {
        Self {
            max_error_ratio: default_error_ratio(),
            max_latency_ratio: default_latency_ratio(),
            min_error_rate: default_min_error_rate(),
            min_latency: default_min_latency(),
            interval: default_canary_interval(),
        }
    }
}

fn default_error_ratio() -> f64 {
    2.0
}

fn default_latency_ratio() -> f64 {
    1.5
}

fn default_min_error_rate() -> f64 {
    0.1
}

fn default_min_latency() -> Duration {
    Duration::from_millis(5)
}

fn default_canary_interval() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Riemann {
    pub server: String,
}
