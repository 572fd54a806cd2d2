//! Benchmark driver (bench/riemann_probe.sh): sends N events through a Probe to ADDR and prints
//! `events_per_s=… send_p50_ns=… send_p99_ns=…`, where the rate counts until every event was
//! acknowledged (shutdown returned) and the send cost is the caller's time per `send` call.

use riemann_probe::{ClientConfig, Probe, ProbeConfig, event};
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:5555".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let mut cfg = ProbeConfig::new(ClientConfig::tcp(addr));
    cfg.capacity = n + 1; // measure throughput, not the drop policy
    let probe = Probe::start(cfg);
    let template = event("bench")
        .host("bench-host")
        .state("ok")
        .ttl(60.0)
        .build();
    let mut costs = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let mut e = template.clone();
        e.metric_sint64 = Some(i as i64);
        let t = Instant::now();
        probe.send(e);
        costs.push(t.elapsed().as_nanos() as u64);
    }
    let stats = probe.shutdown(Duration::from_secs(120));
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        stats.sent as usize, n,
        "not every event was delivered: {stats:?}"
    );
    costs.sort_unstable();
    let pct = |p: f64| costs[((costs.len() - 1) as f64 * p) as usize];
    println!(
        "events_per_s={:.0} send_p50_ns={} send_p99_ns={}",
        n as f64 / secs,
        pct(0.50),
        pct(0.99)
    );
}
