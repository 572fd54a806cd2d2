//! `watch`: the events of its collectors, sent every interval until stopped, as riemann-tools'
//! tools run. Each event carries a ttl of a few intervals, so Riemann expires them, and alerts,
//! when the watcher dies. Sending goes through a [`Probe`]: a slow or absent Riemann never
//! delays the next interval's sampling.

use crate::client::ClientConfig;
use crate::event::{EventBuilder, event};
use crate::health::{HealthLimits, HostHealth};
use crate::probe::{Probe, ProbeConfig, ProbeStats};
use crate::proto::Event;
use plugin_api::{PluginRun, State};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What to sample each interval.
pub enum Collector {
    /// cpu, memory, load and disk per mount, as riemann-health.
    Health(HealthLimits),
    /// A Nagios plugin: its state, first line and perfdata (as `riemann-probe nagios`).
    Nagios {
        /// The plugin and its arguments.
        argv: Vec<String>,
        /// The check's service name; perfdata events are `SERVICE LABEL`.
        service: String,
    },
    /// Any command: `ok` when it exits 0, else `critical`; its exit code as the metric and its
    /// first output line as the description.
    Command {
        /// The program and its arguments.
        argv: Vec<String>,
        /// The event's service name.
        service: String,
    },
}

/// What [`watch`] samples, how often, and where it sends the events.
pub struct WatchConfig {
    /// The connection to Riemann.
    pub client: ClientConfig,
    /// Time between samples.
    pub interval: Duration,
    /// Seconds; `None`: three intervals.
    pub ttl: Option<f32>,
    /// `None`: this machine's hostname.
    pub host: Option<String>,
    /// How long a plugin or command may run before it is killed (and reported critical).
    pub command_timeout: Duration,
    /// What to sample, in order, each interval.
    pub collectors: Vec<Collector>,
}

enum Running {
    Health(HostHealth),
    Nagios { argv: Vec<String>, service: String },
    Command { argv: Vec<String>, service: String },
}

fn command_events(
    base: &dyn Fn(String) -> EventBuilder,
    run: &PluginRun,
    service: &str,
) -> Vec<Event> {
    let ok = run.code == Some(0);
    let mut b = base(service.to_owned())
        .state(if ok { "ok" } else { "critical" })
        .description(run.first_line.clone());
    if let Some(code) = run.code {
        b = b.metric(i64::from(code));
    }
    vec![b.build()]
}

/// A collector whose program could not even start: one critical event saying why.
fn failed(base: &dyn Fn(String) -> EventBuilder, service: &str, why: String) -> Vec<Event> {
    vec![
        base(service.to_owned())
            .state(State::Critical.as_lower())
            .description(why)
            .build(),
    ]
}

/// Samples and sends every `interval` until `stop` is set; then flushes what is queued (within
/// the client's timeout) and returns what was sent and dropped.
pub fn watch(cfg: WatchConfig, stop: &AtomicBool) -> ProbeStats {
    let ttl = cfg.ttl.unwrap_or(3.0 * cfg.interval.as_secs_f32());
    let host = cfg.host.clone();
    let base = move |service: String| {
        let mut b = event(service).ttl(ttl).tag("riemann-probe");
        if let Some(h) = &host {
            b = b.host(h.as_str());
        }
        b
    };
    let mut collectors: Vec<Running> = cfg
        .collectors
        .into_iter()
        .map(|c| match c {
            Collector::Health(limits) => Running::Health(HostHealth::new(limits, cfg.interval)),
            Collector::Nagios { argv, service } => Running::Nagios { argv, service },
            Collector::Command { argv, service } => Running::Command { argv, service },
        })
        .collect();
    let probe = Probe::start(ProbeConfig::new(cfg.client.clone()));
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // Sleep in short steps so a signal ends the watch at once.
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(100)));
            continue;
        }
        // A slow collector delays the next sample instead of piling samples up.
        next = (next + cfg.interval).max(Instant::now());
        for c in &mut collectors {
            let events = match c {
                Running::Health(h) => h.sample(&base),
                Running::Nagios { argv, service } => {
                    match plugin_api::run_argv(argv, cfg.command_timeout) {
                        Ok(run) => crate::nagios::events_with(&run, service, &base),
                        Err(e) => failed(&base, service, e.to_string()),
                    }
                }
                Running::Command { argv, service } => {
                    match plugin_api::run_argv(argv, cfg.command_timeout) {
                        Ok(run) => command_events(&base, &run, service),
                        Err(e) => failed(&base, service, e.to_string()),
                    }
                }
            };
            for e in events {
                probe.send(e);
            }
        }
    }
    probe.shutdown(cfg.client.timeout)
}
