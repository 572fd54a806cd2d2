//! Request metrics per reporting interval, and the Riemann reporter: a heartbeat with a TTL plus
//! request rate, error rate, latency percentiles, breaker state and journal depth.

use crate::users::BreakerState;
use crate::users::Degradation;
use crate::users::Users;
use riemann_probe::{ClientConfig, Event, Probe, ProbeConfig, event};
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
        let mut samples = std::mem::take(&mut *toolkit_core::lock(&self.latencies_us));
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

/// Where and how often to report to Riemann (keys of the config file as the flags, with
/// underscores).
#[derive(clap::Args, serde::Serialize, serde::Deserialize, Clone)]
#[command(next_help_heading = "Riemann")]
pub struct RiemannSettings {
    /// Send a heartbeat and metrics to this Riemann server (HOST:PORT, TCP)
    #[arg(long, env = "USERSVC_RIEMANN", value_name = "HOST:PORT", global = true)]
    pub riemann: Option<String>,

    /// Reporting interval; events carry ttl = 3 x interval
    #[arg(long, env = "USERSVC_RIEMANN_INTERVAL", value_name = "DURATION", default_value = "5s",
        value_parser = toolkit_core::duration::positive, global = true)]
    #[serde(with = "toolkit_core::duration")]
    pub riemann_interval: Duration,

    /// The host name Riemann events carry [default: this machine's hostname]
    #[arg(long, env = "USERSVC_RIEMANN_HOST", value_name = "NAME", global = true)]
    pub riemann_host: Option<String>,
}

impl RiemannSettings {
    /// Where to report, when `--riemann` is set.
    pub fn config(&self) -> Option<RiemannConfig> {
        Some(RiemannConfig {
            addr: self.riemann.clone()?,
            interval: self.riemann_interval,
            host: self.riemann_host.clone(),
        })
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

/// What every event says of its sender.
#[derive(Debug, Clone)]
pub struct Sender {
    pub host: String,
    /// Seconds: 3 × the interval, so Riemann expires the events when the service dies.
    pub ttl: f32,
    /// The release and revision that sent them (attributes `release`, `revision`), so a
    /// dashboard compares revisions (a canary against the rest).
    pub release: crate::release::Release,
}

/// One interval's events: heartbeat, request and error rates, latency percentiles, breaker and
/// journal depth. Pure: what the reporter sends, testable without a network.
pub fn events(m: &Interval, elapsed_secs: f64, d: &Degradation, from: &Sender) -> Vec<Event> {
    let e = |service: &str| {
        let mut b = event(format!("usersvc {service}"))
            .host(from.host.as_str())
            .ttl(from.ttl)
            .tag("usersvc");
        if let Some(r) = &from.release.name {
            b = b.attribute("release", r.as_str());
        }
        if let Some(r) = &from.release.revision {
            b = b.attribute("revision", r.as_str());
        }
        b
    };
    let mut out = vec![
        e("heartbeat")
            .state("ok")
            .description("usersvc is alive")
            .build(),
        e("requests rate")
            .state("ok")
            .metric(m.requests as f64 / elapsed_secs)
            .build(),
        e("errors rate")
            .state("ok")
            .metric(m.errors as f64 / elapsed_secs)
            .build(),
    ];
    for (name, v) in [
        ("latency p50", m.p50),
        ("latency p95", m.p95),
        ("latency p99", m.p99),
    ] {
        out.push(e(name).state("ok").metric(v).build());
    }
    let breaker_state = match d.breaker {
        BreakerState::Closed => "ok",
        BreakerState::HalfOpen => "warning",
        BreakerState::Open => "critical",
    };
    out.push(
        e("breaker")
            .state(breaker_state)
            .metric(i64::from(d.breaker != BreakerState::Closed))
            .description(d.breaker.as_str())
            .build(),
    );
    out.push(
        e("journal depth")
            .state(if d.journal_depth == 0 {
                "ok"
            } else {
                "warning"
            })
            .metric(d.journal_depth as i64)
            .build(),
    );
    out
}

/// Reports every interval until the returned probe is shut down by the caller.
pub fn start_reporter(
    cfg: RiemannConfig,
    metrics: std::sync::Arc<Metrics>,
    users: Users,
    release: &crate::release::Release,
) -> Probe {
    let probe = Probe::start(ProbeConfig::new(ClientConfig::tcp(cfg.addr.clone())));
    let reporter = probe.clone();
    let tasks = users.tasks().clone();
    let from = Sender {
        host: cfg.host.clone().unwrap_or_else(toolkit_core::hostname),
        ttl: cfg.interval.saturating_mul(3).as_secs_f32(),
        release: release.clone(),
    };
    tasks.spawn("riemann reporter", async move {
        let secs = cfg.interval.as_secs_f64();
        let mut tick = tokio::time::interval(cfg.interval);
        let mut last = Instant::now();
        loop {
            tick.tick().await;
            let elapsed = last.elapsed().as_secs_f64().max(secs / 10.0);
            last = Instant::now();
            for e in events(&metrics.take(), elapsed, &users.degradation(), &from) {
                reporter.send(e);
            }
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

    #[test]
    fn events_say_which_release_sent_them() {
        let from = Sender {
            host: "app1".into(),
            ttl: 15.0,
            release: crate::release::Release {
                name: Some("20261201100000".into()),
                revision: Some("abc123".into()),
            },
        };
        let interval = Interval {
            requests: 50,
            errors: 5,
            p50: 0.001,
            p95: 0.002,
            p99: 0.003,
        };
        let d = Degradation {
            breaker: BreakerState::Open,
            journal_depth: 3,
            from_copy: false,
            handover: false,
        };
        let all = events(&interval, 5.0, &d, &from);
        let find = |service: &str| {
            all.iter()
                .find(|e| e.service.as_deref() == Some(service))
                .unwrap_or_else(|| panic!("no {service}"))
        };
        assert_eq!(find("usersvc errors rate").metric(), Some(1.0));
        assert_eq!(find("usersvc breaker").state.as_deref(), Some("critical"));
        assert_eq!(find("usersvc journal depth").metric_sint64, Some(3));
        for e in &all {
            assert_eq!(e.ttl, Some(15.0));
            let attr = |k: &str| {
                e.attributes
                    .iter()
                    .find(|a| a.key == k)
                    .and_then(|a| a.value.clone())
            };
            assert_eq!(attr("revision").as_deref(), Some("abc123"), "{e:?}");
            assert_eq!(attr("release").as_deref(), Some("20261201100000"));
        }
    }
}
