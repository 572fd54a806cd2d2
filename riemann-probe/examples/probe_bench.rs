//! Benchmark driver (bench/riemann_probe.sh): sends N events through a Probe to ADDR, twice, and
//! prints `events_per_s=… send_p50_ns=… send_p99_ns=… warm_p50_ns=… warm_p99_ns=… limit_p50_ns=…
//! limit_p99_ns=…`. The rate counts the first pass until every event was acknowledged; the send
//! cost is the caller's time per `send` call, in the first pass and in a second one (as in a
//! long-running service). The limit is the same loop pushing into a bare lock-free queue that
//! another thread empties: what a `send` cannot beat on this machine.

use crossbeam_queue::ArrayQueue;
use riemann_probe::{ClientConfig, Event, Probe, ProbeConfig, event};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    let start = Instant::now();
    let cold = pass(&probe, &template, n);
    while probe.stats().sent < n as u64 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = start.elapsed().as_secs_f64();
    let warm = pass(&probe, &template, n);
    let limit = limit(&template, n);
    let stats = probe.shutdown(Duration::from_secs(120));
    assert_eq!(
        stats.sent as usize,
        2 * n,
        "not every event was delivered: {stats:?}"
    );
    println!(
        "events_per_s={:.0} send_p50_ns={} send_p99_ns={} warm_p50_ns={} warm_p99_ns={} \
         limit_p50_ns={} limit_p99_ns={}",
        n as f64 / secs,
        cold.0,
        cold.1,
        warm.0,
        warm.1,
        limit.0,
        limit.1
    );
}

/// Sends `n` events; the median and p99 of the caller's time per `send`, in ns.
fn pass(probe: &Probe, template: &Event, n: usize) -> (u64, u64) {
    timed(template, n, |e| probe.send(e))
}

/// The same loop into a bare lock-free queue of the same capacity, emptied by another thread.
fn limit(template: &Event, n: usize) -> (u64, u64) {
    let queue = Arc::new(ArrayQueue::<Event>::new(n + 1));
    let done = Arc::new(AtomicBool::new(false));
    let (q, d) = (queue.clone(), done.clone());
    let consumer = std::thread::spawn(move || {
        while !d.load(Ordering::Relaxed) {
            if q.pop().is_none() {
                std::thread::yield_now();
            }
        }
    });
    let costs = timed(template, n, |e| {
        let _ = queue.force_push(e);
    });
    done.store(true, Ordering::Relaxed);
    let _ = consumer.join();
    costs
}

/// Hands `n` copies of `template` to `f`; the median and p99 of the time per call, in ns.
fn timed(template: &Event, n: usize, f: impl Fn(Event)) -> (u64, u64) {
    let mut costs = Vec::with_capacity(n);
    for i in 0..n {
        let mut e = template.clone();
        e.metric_sint64 = Some(i as i64);
        let t = Instant::now();
        f(e);
        costs.push(t.elapsed().as_nanos() as u64);
    }
    costs.sort_unstable();
    let pct = |p: f64| costs[((costs.len() - 1) as f64 * p) as usize];
    (pct(0.50), pct(0.99))
}
