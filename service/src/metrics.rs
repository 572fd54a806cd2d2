//! Request metrics per reporting interval, and the Riemann reporter: a heartbeat with a TTL plus
//! request rate, error rate, latency percentiles, breaker state and journal depth.

use crate::users::Users;
use riemann_probe::{ClientConfig, Probe, ProbeConfig, event};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Latency samples kept per interval; beyond this, requests are counted but not sampled.
const MAX_SAMPLES: usize = 65_536;

#[derive(Default)]
pub struct Metrics {
    requests: AtomicU64,
    errors: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

/// One interval's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    pub requests: u64,
    pub errors: u64,
    /// Seconds.
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Metrics {
    pub fn record(&self, elapsed: Duration, error: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut l) = self.latencies_us.try_lock()
            && l.len() < MAX_SAMPLES
        {
            l.push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
        }
    }

    /// Takes this interval's figures and starts the next.
    pub fn take(&self) -> Interval {
        let mut samples =
            std::mem::take(&mut *self.latencies_us.lock().unwrap_or_else(|e| e.into_inner()));
        samples.sort_unstable();
        let pct = |p: f64| {
            if samples.is_empty() {
                0.0
            } else {
                let i = ((samples.len() - 1) as f64 * p).round() as usize;
                f64::from(samples[i]) / 1e6
            }
        };
        Interval {
            requests: self.requests.swap(0, Ordering::Relaxed),
            errors: self.errors.swap(0, Ordering::Relaxed),
            p50: pct(0.50),
            p95: pct(0.95),
            p99: pct(0.99),
        }
    }
}

/// Where and how often to report.
#[derive(Debug, Clone)]
pub struct RiemannConfig {
    pub addr: String,
    pub interval: Duration,
    /// The host events carry; `None`: this machine's hostname.
    pub host: Option<String>,
}

/// Reports every interval until the returned probe is shut down by the caller.
pub fn start_reporter(cfg: RiemannConfig, metrics: std::sync::Arc<Metrics>, users: Users) -> Probe {
    let probe = Probe::start(ProbeConfig::new(ClientConfig::tcp(cfg.addr.clone())));
    let reporter = probe.clone();
    let tasks = users.tasks().clone();
    tasks.spawn("riemann reporter", async move {
        let ttl = (cfg.interval * 3).as_secs_f32();
        let secs = cfg.interval.as_secs_f64();
        let mut tick = tokio::time::interval(cfg.interval);
        let mut last = Instant::now();
        let host = cfg.host.unwrap_or_else(riemann_probe::hostname);
        loop {
            tick.tick().await;
            let elapsed = last.elapsed().as_secs_f64().max(secs / 10.0);
            last = Instant::now();
            let m = metrics.take();
            let d = users.degradation();
            let e = |service: &str| {
                event(format!("usersvc {service}"))
                    .host(host.as_str())
                    .ttl(ttl)
                    .tag("usersvc")
            };
            reporter.send(
                e("heartbeat")
                    .state("ok")
                    .description("usersvc is alive")
                    .build(),
            );
            reporter.send(
                e("requests rate")
                    .state("ok")
                    .metric(m.requests as f64 / elapsed)
                    .build(),
            );
            reporter.send(
                e("errors rate")
                    .state("ok")
                    .metric(m.errors as f64 / elapsed)
                    .build(),
            );
            for (name, v) in [
                ("latency p50", m.p50),
                ("latency p95", m.p95),
                ("latency p99", m.p99),
            ] {
                reporter.send(e(name).state("ok").metric(v).build());
            }
            let breaker_state = match d.breaker {
                crate::breaker::BreakerState::Closed => "ok",
                crate::breaker::BreakerState::HalfOpen => "warning",
                crate::breaker::BreakerState::Open => "critical",
            };
            reporter.send(
                e("breaker")
                    .state(breaker_state)
                    .metric(i64::from(d.breaker != crate::breaker::BreakerState::Closed))
                    .description(d.breaker.as_str())
                    .build(),
            );
            reporter.send(
                e("journal depth")
                    .state(if d.journal_depth == 0 {
                        "ok"
                    } else {
                        "warning"
                    })
                    .metric(d.journal_depth as i64)
                    .build(),
            );
        }
    });
    probe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_per_interval() {
        let m = Metrics::default();
        for ms in 1..=100u64 {
            m.record(Duration::from_millis(ms), ms > 98);
        }
        let i = m.take();
        assert_eq!((i.requests, i.errors), (100, 2));
        assert!((i.p50 - 0.050).abs() < 0.0015, "{i:?}");
        assert!((i.p99 - 0.099).abs() < 0.0015, "{i:?}");
        assert_eq!(m.take().requests, 0, "take starts a new interval");
    }
}
