//! The Prometheus view: `GET /metrics` in the OpenMetrics text format (what Prometheus scrapes).
//!
//! Per-call figures are counted as the dispatcher answers each call ([`rpc::Observe`]); the rest
//! (breaker, journal, snapshot, pull, write batches, build) is read at scrape time from where it
//! is kept, so the write path knows nothing of this format.
//!
//! Label values are bounded whatever clients send: a method is one of `methods::METHODS`,
//! `unknown` (any other name) or `invalid` (no method could be read); an outcome is `ok` or one
//! of the server's own error codes; a status is one the server answered.

use super::methods::METHODS;
use super::rpc::{self, Call};
use crate::pull::PullStats;
use crate::release::Release;
use crate::users::BATCH_BOUNDS;
use crate::users::Users;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

/// What `GET /metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets, in seconds: 100 µs (a cached read) to 10 s (a request near its timeout).
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// JSON-RPC batch sizes (the default --max-batch is 1000).
const BATCH_SIZE_BUCKETS: [f64; 10] =
    [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    outcome: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: u16,
}

/// A method's handles, made once so counting a call looks nothing up in a map.
struct MethodFigures {
    name: &'static str,
    /// `None` for `unknown` and `invalid`: they never succeed, so no series says they did.
    ok: Option<Counter>,
    duration: Histogram,
}

/// The registry and the handles the request path counts with.
pub struct Exposition {
    registry: Registry,
    methods: Vec<MethodFigures>,
    calls: Family<CallLabels, Counter>,
    batch_sizes: Histogram,
    in_flight: Gauge,
    responses: Family<StatusLabels, Counter>,
}

/// Where the scrape-time figures are read from.
pub struct Sources {
    pub users: Users,
    pub pull: Option<Arc<PullStats>>,
    pub release: Release,
}

impl Exposition {
    pub fn new(sources: Sources) -> Self {
        let mut registry = Registry::default();
        let calls = Family::<CallLabels, Counter>::default();
        let durations = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(LATENCY_BUCKETS)
        });
        let ours = METHODS.iter().map(|m| (*m, true));
        let methods = ours
            .chain([("unknown", false), ("invalid", false)])
            .map(|(name, succeeds)| MethodFigures {
                name,
                ok: succeeds.then(|| {
                    calls.get_or_create_owned(&CallLabels {
                        method: name,
                        outcome: Cow::Borrowed("ok"),
                    })
                }),
                duration: durations.get_or_create_owned(&MethodLabels { method: name }),
            })
            .collect();
        let batch_sizes = Histogram::new(BATCH_SIZE_BUCKETS);
        let in_flight = Gauge::default();
        let responses = Family::<StatusLabels, Counter>::default();
        registry.register(
            "usersvc_rpc_calls",
            "JSON-RPC calls answered (notifications included), by method and outcome (ok or the error code)",
            calls.clone(),
        );
        registry.register(
            "usersvc_rpc_call_duration_seconds",
            "Time to answer one JSON-RPC call, by method",
            durations,
        );
        registry.register(
            "usersvc_rpc_batch_size",
            "Calls per JSON-RPC batch request",
            batch_sizes.clone(),
        );
        registry.register(
            "usersvc_http_requests_in_flight",
            "JSON-RPC HTTP requests being handled now",
            in_flight.clone(),
        );
        registry.register(
            "usersvc_http_responses",
            "JSON-RPC HTTP requests answered, by HTTP status (401, 408, 413 and 415 are refusals)",
            responses.clone(),
        );
        registry.register_collector(Box::new(Scraped(sources)));
        Self {
            registry,
            methods,
            calls,
            batch_sizes,
            in_flight,
            responses,
        }
    }

    /// The text a scrape gets.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        // Writing into a String cannot fail; a collector's own error would be a bug here.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding /metrics failed");
        }
        out
    }

    /// Counts one JSON-RPC HTTP request from its start to its answer's status.
    pub fn request(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(self)
    }

    /// `methods` holds METHODS in order, then `unknown`, then `invalid`.
    fn figures(&self, method: Option<&str>) -> &MethodFigures {
        let i = match method {
            None => METHODS.len() + 1,
            Some(m) => METHODS
                .iter()
                .position(|k| *k == m)
                .unwrap_or(METHODS.len()),
        };
        &self.methods[i]
    }
}

/// One request in flight; dropped (answered or cancelled), it is no longer counted.
pub struct InFlight<'a>(&'a Exposition);

impl InFlight<'_> {
    pub fn answered(self, status: u16) {
        self.0
            .responses
            .get_or_create(&StatusLabels { status })
            .inc();
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

impl rpc::Observe for Exposition {
    fn call(&self, call: &Call<'_>) {
        let f = self.figures(call.method);
        f.duration.observe(call.elapsed.as_secs_f64());
        match (call.code, &f.ok) {
            (None, Some(ok)) => {
                ok.inc();
            }
            (code, _) => {
                let outcome = code.map_or(Cow::Borrowed("ok"), |c| Cow::Owned(c.to_string()));
                self.calls
                    .get_or_create(&CallLabels {
                        method: f.name,
                        outcome,
                    })
                    .inc();
            }
        }
    }

    fn batch(&self, size: usize) {
        self.batch_sizes.observe(size as f64);
    }
}

/// A label value as the text format writes it: backslash, quote and newline escaped.
fn label_text(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The figures read at each scrape.
struct Scraped(Sources);

impl std::fmt::Debug for Scraped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scraped")
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl prometheus_client::encoding::EncodeGaugeValue,
) -> Result<(), std::fmt::Error> {
    let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(m)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(m)
}

impl Collector for Scraped {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Sources {
            users,
            pull,
            release,
        } = &self.0;
        build_info(&mut e, release)?;
        store_health(&mut e, users)?;
        write_path(&mut e, users)?;
        if let Some(p) = pull {
            pulls(&mut e, p)?;
        }
        Ok(())
    }
}

/// `usersvc_build_info`: what runs.
fn build_info(e: &mut DescriptorEncoder, release: &Release) -> std::fmt::Result {
    let mut build = e.encode_descriptor(
        "usersvc_build_info",
        "The running build: always 1, its version, revision and release as labels",
        None,
        MetricType::Gauge,
    )?;
    // The encoder writes label values as they are: a quote in a REVISION file would break
    // every scrape, so they are escaped here.
    let labels = [
        ("version", label_text(crate::release::VERSION)),
        (
            "revision",
            label_text(release.revision.as_deref().unwrap_or("")),
        ),
        ("release", label_text(release.name.as_deref().unwrap_or(""))),
    ];
    ConstGauge::new(1i64).encode(build.encode_family(&labels)?)
}

/// The breaker, the journal's depth, the snapshot and its local copy.
fn store_health(e: &mut DescriptorEncoder, users: &Users) -> std::fmt::Result {
    let d = users.degradation();
    let mut breaker = e.encode_descriptor(
        "usersvc_breaker_state",
        "The store's circuit breaker: 1 for its current state",
        None,
        MetricType::Gauge,
    )?;
    for state in ["closed", "open", "half-open"] {
        let value = i64::from(d.breaker.as_str() == state);
        ConstGauge::new(value).encode(breaker.encode_family(&[("state", state)])?)?;
    }
    gauge(
        e,
        "usersvc_journal_depth",
        "Writes queued in the journal, waiting for the store",
        d.journal_depth as i64,
    )?;
    gauge(
        e,
        "usersvc_snapshot_users",
        "Users in the in-memory snapshot reads are served from",
        users.count() as i64,
    )?;
    gauge(
        e,
        "usersvc_snapshot_from_local_copy",
        "1 while serving the local copy of a cold start (the store has not answered since)",
        i64::from(d.from_copy),
    )?;
    if let Some((bytes, written)) = crate::store::copy_on_disk(users.copy_path()) {
        gauge(
            e,
            "usersvc_local_copy_bytes",
            "Size of the snapshot's local copy on disk (base and log)",
            bytes as i64,
        )?;
        let age = SystemTime::now()
            .duration_since(written)
            .unwrap_or(Duration::ZERO);
        gauge(
            e,
            "usersvc_local_copy_age_seconds",
            "Time since the snapshot's local copy was last written",
            age.as_secs_f64(),
        )?;
    }
    Ok(())
}

/// The journal's counters, the committer's batch sizes and the background tasks.
fn write_path(e: &mut DescriptorEncoder, users: &Users) -> std::fmt::Result {
    let stats = users.stats();
    for (name, help, value) in [
        (
            "usersvc_journal_queued",
            "Writes queued in the journal while the store was unreachable",
            &stats.queued,
        ),
        (
            "usersvc_journal_replayed",
            "Queued writes replayed into the store",
            &stats.replayed,
        ),
        (
            "usersvc_journal_replay_conflicts",
            "Queued writes that conflicted on replay (reported, not applied)",
            &stats.replay_conflicts,
        ),
        (
            "usersvc_journal_quarantined",
            "Journal records that could not be replayed, kept in the quarantine file",
            &stats.quarantined,
        ),
    ] {
        counter(e, name, help, value.load(Ordering::Relaxed))?;
    }
    let (writes, per_bucket) = stats.write_batches.read();
    let mut batches = e.encode_descriptor(
        "usersvc_write_batch_size",
        "Writes the committer took in one batch (one transaction, or one journal append)",
        None,
        MetricType::Histogram,
    )?;
    let buckets: Vec<(f64, u64)> = BATCH_BOUNDS
        .iter()
        .map(|b| *b as f64)
        .chain([f64::MAX])
        .zip(per_bucket)
        .collect();
    batches.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        writes as f64,
        per_bucket.iter().sum(),
        &buckets,
        None,
    )?;
    gauge(
        e,
        "usersvc_background_tasks_failed",
        "Background tasks (committer, supervisor, puller, reporter) that stopped",
        users.tasks().failed().len() as i64,
    )
}

/// Pulls by result, and the users they changed.
fn pulls(e: &mut DescriptorEncoder, p: &PullStats) -> std::fmt::Result {
    let mut pulls = e.encode_descriptor(
        "usersvc_pulls",
        "Pulls from the upstream source, by result",
        None,
        MetricType::Counter,
    )?;
    for (result, n) in [("ok", &p.ok), ("failed", &p.failed)] {
        ConstCounter::new(n.load(Ordering::Relaxed))
            .encode(pulls.encode_family(&[("result", result)])?)?;
    }
    counter(
        e,
        "usersvc_pull_changed_users",
        "Users written by pulls because they were new or different",
        p.changed.load(Ordering::Relaxed),
    )
}

#[cfg(test)]
mod tests {
    use super::label_text;

    #[test]
    fn label_values_are_escaped_as_the_text_format_wants() {
        assert_eq!(label_text("fix \"x\"\\y\nz"), "fix \\\"x\\\"\\\\y\\nz");
        assert_eq!(label_text("abc123"), "abc123");
    }
}
