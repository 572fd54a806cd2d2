//! `watch`: the events of its collectors, sent every interval until stopped, as riemann-tools'
//! tools run. Each event carries a ttl of a few intervals, so Riemann expires them, and alerts,
//! when the watcher dies. Sending goes through a [`Probe`]: a slow or absent Riemann never
//! delays the next interval's sampling. What goes wrong locally is said through
//! [`WatchConfig::say`] (the CLI: stderr), once when it starts and once when it ends: Riemann
//! out of reach, a plugin or command that cannot run.

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
    /// Where the watcher's own news goes: its start, Riemann lost and found again, a plugin that
    /// cannot run and runs again (one line each, never one per interval).
    pub say: fn(&str),
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
    /// A Nagios plugin (`nagios`: its state and perfdata) or a command (its exit code).
    Program {
        argv: Vec<String>,
        service: String,
        nagios: bool,
        failing: bool,
    },
}

/// Says when a program starts or stops failing to run (not every interval it fails).
fn ran<T>(
    say: fn(&str),
    failing: &mut bool,
    argv: &[String],
    run: Result<T, plugin_api::RunError>,
) -> Result<T, String> {
    let name = argv.first().map_or("", String::as_str);
    match run {
        Ok(r) => {
            if std::mem::replace(failing, false) {
                say(&format!("{name} runs again"));
            }
            Ok(r)
        }
        Err(e) => {
            if !std::mem::replace(failing, true) {
                say(&format!(
                    "cannot run {name}: {e} (reported critical every interval until it runs)"
                ));
            }
            Err(e.to_string())
        }
    }
}

/// Says when Riemann stops answering and when it answers again, from the probe's counters.
struct Reach {
    down: bool,
    failures: u64,
    sent: u64,
}

impl Reach {
    fn look(&mut self, say: fn(&str), addr: &str, stats: &ProbeStats) {
        let failures = stats.connect_failures + stats.send_failures;
        if !self.down && failures > self.failures {
            self.down = true;
            say(&format!(
                "cannot reach Riemann at {addr}: events wait in the queue (the oldest dropped past 10,000) until it answers"
            ));
        } else if self.down && stats.sent > self.sent {
            self.down = false;
            say(&format!(
                "Riemann at {addr} answers again ({} events dropped so far)",
                stats.dropped
            ));
        }
        self.failures = failures;
        self.sent = stats.sent;
    }
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
        .map(|c| Running::new(c, cfg.interval))
        .collect();
    let say = cfg.say;
    let what: Vec<String> = collectors.iter().map(Running::name).collect();
    say(&format!(
        "watching {} every {}, sending to Riemann at {}",
        what.join(", "),
        humantime::format_duration(cfg.interval),
        cfg.client.addr
    ));
    let probe = Probe::start(ProbeConfig::new(cfg.client.clone()));
    let mut reach = Reach {
        down: false,
        failures: 0,
        sent: 0,
    };
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
        reach.look(say, &cfg.client.addr, &probe.stats());
        for c in &mut collectors {
            for e in c.sample(&base, say, cfg.command_timeout) {
                probe.send(e);
            }
        }
    }
    probe.shutdown(cfg.client.timeout)
}

impl Running {
    fn new(c: Collector, interval: Duration) -> Self {
        match c {
            Collector::Health(limits) => Running::Health(HostHealth::new(limits, interval)),
            Collector::Nagios { argv, service } => Running::Program {
                argv,
                service,
                nagios: true,
                failing: false,
            },
            Collector::Command { argv, service } => Running::Program {
                argv,
                service,
                nagios: false,
                failing: false,
            },
        }
    }

    /// What the start line calls it.
    fn name(&self) -> String {
        match self {
            Running::Health(_) => "host health".to_owned(),
            Running::Program { argv, .. } => argv.first().cloned().unwrap_or_default(),
        }
    }

    /// One round's events: the host's health, or the program run once (within `timeout`).
    fn sample(
        &mut self,
        base: &dyn Fn(String) -> EventBuilder,
        say: fn(&str),
        timeout: Duration,
    ) -> Vec<Event> {
        match self {
            Running::Health(h) => h.sample(base),
            Running::Program {
                argv,
                service,
                nagios,
                failing,
            } => {
                let run = plugin_api::run_argv(argv, timeout);
                match ran(say, failing, argv, run) {
                    Ok(run) if *nagios => crate::nagios::events_with(&run, service, base),
                    Ok(run) => command_events(base, &run, service),
                    Err(e) => failed(base, service, e),
                }
            }
        }
    }
}
