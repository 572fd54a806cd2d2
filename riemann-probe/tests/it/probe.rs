//! Probe and Heartbeat against the sink: batching, Riemann going away and coming back (bounded
//! memory, drops counted and reported), expiry of a heartbeat that stops.

use riemann_probe::{ClientConfig, Heartbeat, Probe, ProbeConfig, event};
use std::time::Duration;
use testbed::riemann::{Fault, Sink};

fn probe_to(sink: &Sink, capacity: usize) -> Probe {
    let mut cfg = ProbeConfig::new(ClientConfig {
        timeout: Duration::from_millis(300),
        ..ClientConfig::tcp(sink.tcp_addr().to_string())
    });
    cfg.capacity = capacity;
    cfg.batch = 50;
    cfg.flush_every = Duration::from_millis(20);
    cfg.backoff_min = Duration::from_millis(20);
    cfg.backoff_max = Duration::from_millis(200);
    Probe::start(cfg)
}

/// A probe of `capacity` that has delivered one event, then its sink gone down (it accepts and
/// closes).
fn delivering_then_down(capacity: usize) -> (Sink, Probe) {
    let sink = Sink::start();
    let probe = probe_to(&sink, capacity);
    probe.send(event("before").build());
    sink.wait_for(Duration::from_secs(5), |e| {
        e.service.as_deref() == Some("before")
    });
    sink.down();
    (sink, probe)
}

fn eventually(what: &str, f: impl Fn() -> bool) {
    testbed::eventually(what, Duration::from_secs(20), f);
}

#[test]
fn delivers_everything_in_order_when_riemann_is_up() {
    let sink = Sink::start();
    let probe = probe_to(&sink, 10_000);
    for i in 0..1000i64 {
        probe.send(event("seq").host("h").metric(i).build());
    }
    let st = probe.shutdown(Duration::from_secs(10));
    assert_eq!((st.sent, st.dropped, st.queued), (1000, 0, 0));
    let got: Vec<i64> = sink
        .received()
        .iter()
        .filter_map(|e| e.metric_sint64)
        .collect();
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
}

#[test]
fn riemann_away_then_back_bounded_and_counted() {
    let (sink, probe) = delivering_then_down(100);
    for i in 0..5000i64 {
        probe.send(event("during").metric(i).build());
    }
    let st = probe.stats();
    // Bounded: the queue holds at most its capacity, the sender at most as many again (those it
    // took, kept while it reconnects) and its drop report; every other event is dropped and
    // counted.
    assert!(st.queued <= 2 * 100 + 1, "queue is bounded: {st:?}");
    assert!(st.dropped >= 5000 - 2 * 100, "{st:?}");
    sink.up();
    // Flows again, and the drops are reported as an event of their own.
    let drop_event = sink.wait_for(Duration::from_secs(10), |e| {
        e.service.as_deref() == Some("riemann-probe dropped")
    });
    assert!(drop_event.metric().unwrap_or(0.0) > 0.0);
    probe.send(event("after").build());
    sink.wait_for(Duration::from_secs(10), |e| {
        e.service.as_deref() == Some("after")
    });
    // The newest events survived the outage, oldest dropped first.
    let during: Vec<i64> = sink
        .received()
        .iter()
        .filter(|e| e.service.as_deref() == Some("during"))
        .filter_map(|e| e.metric_sint64)
        .collect();
    assert!(during.contains(&4999), "{during:?}");
    assert!(!during.contains(&0));
    let st = probe.shutdown(Duration::from_secs(5));
    assert_eq!(st.queued, 0);
}

#[test]
fn a_stalled_or_refusing_riemann_never_blocks_send() {
    let sink = Sink::start();
    let probe = probe_to(&sink, 1000);
    sink.set_fault(Fault::Stall);
    for _ in 0..20_000 {
        probe.send(event("stalled").build());
    }
    sink.set_fault(Fault::NotOk("overloaded".into()));
    for _ in 0..20_000 {
        probe.send(event("refused").build());
    }
    assert!(probe.stats().queued <= 2 * 1000 + 1);
    // Shutdown respects its deadline even though nothing can be delivered.
    let st = probe.shutdown(Duration::from_millis(300));
    assert_eq!(st.queued, 0);
    assert!(st.dropped > 0);
}

#[test]
fn a_stopped_heartbeat_expires() {
    let sink = Sink::start();
    let probe = probe_to(&sink, 1000);
    let hb = Heartbeat::start(probe.clone(), "hb svc", Duration::from_millis(100), None);
    let first = sink.wait_for(Duration::from_secs(5), |e| {
        e.service.as_deref() == Some("hb svc")
    });
    assert!(
        (first.ttl.unwrap_or(0.0) - 0.3).abs() < 1e-6,
        "ttl = 3 x interval: {first:?}"
    );
    // Five heartbeats span more than the ttl (0.3 s): a live one must not have expired by then.
    eventually("five heartbeats arrive", || {
        sink.received()
            .iter()
            .filter(|e| e.service.as_deref() == Some("hb svc"))
            .count()
            >= 5
    });
    assert!(
        sink.expired().is_empty(),
        "alive heartbeats must not expire: {:?}",
        sink.expired()
    );
    hb.stop();
    eventually("the heartbeat expires", || {
        sink.expired().iter().any(|e| {
            e.service.as_deref() == Some("hb svc") && e.state.as_deref() == Some("expired")
        })
    });
    probe.shutdown(Duration::from_secs(1));
}

#[test]
fn a_backlog_goes_ten_batches_a_message_in_order() {
    let sink = Sink::start();
    let probe = probe_to(&sink, 10_000);
    sink.down();
    for i in 0..5000i64 {
        probe.send(event("backlog").metric(i).build());
    }
    sink.up();
    let st = probe.shutdown(Duration::from_secs(20));
    assert_eq!((st.sent, st.dropped, st.queued), (5000, 0, 0), "{st:?}");
    let got: Vec<i64> = sink
        .received()
        .iter()
        .filter_map(|e| e.metric_sint64)
        .collect();
    assert_eq!(got, (0..5000).collect::<Vec<_>>(), "every event, in order");
    // batch = 50: a message carries at most ten batches, and the backlog filled some.
    let sizes = sink.message_sizes();
    assert!(sizes.iter().all(|&n| n <= 500), "{sizes:?}");
    assert!(sizes.contains(&500), "{sizes:?}");
}

#[test]
fn a_long_outage_keeps_the_queue_bounded() {
    let (sink, probe) = delivering_then_down(100);
    // Events keep coming through many reconnect rounds, each with drops to report: the
    // reports must not pile up on top of the held events.
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let mut worst = 0;
    while std::time::Instant::now() < until {
        for i in 0..200i64 {
            probe.send(event("during").metric(i).build());
        }
        worst = worst.max(probe.stats().queued);
        std::thread::sleep(Duration::from_millis(10));
    }
    let st = probe.stats();
    // The sink accepts and closes: each round is a failed send.
    assert!(st.send_failures >= 5, "several rounds: {st:?}");
    assert!(
        worst <= 2 * 100 + 1,
        "queue is bounded: at most {worst} held, {st:?}"
    );
    // Reports trimmed with the oldest events pass their counts on: Riemann's total is whole.
    sink.up();
    let st = probe.shutdown(Duration::from_secs(10));
    let reported: i64 = sink
        .received()
        .iter()
        .filter(|e| e.service.as_deref() == Some("riemann-probe dropped"))
        .filter_map(|e| e.metric_sint64)
        .sum();
    assert_eq!(reported as u64, st.dropped, "{st:?}");
}

#[test]
fn a_server_that_accepts_and_closes_is_retried_with_a_growing_backoff() {
    let sink = Sink::start();
    let probe = probe_to(&sink, 100);
    sink.down();
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < until {
        probe.send(event("during").build());
        std::thread::sleep(Duration::from_millis(5));
    }
    // Backoff 20 ms doubling to 200 ms: about a dozen rounds in 2 s. Reset at each connection,
    // it was one round every 10-20 ms (about 150).
    let st = probe.stats();
    assert!((3..=25).contains(&st.send_failures), "{st:?}");
    // A server that answers again resets it: the events flow at once.
    sink.up();
    probe.send(event("after").build());
    sink.wait_for(Duration::from_secs(5), |e| {
        e.service.as_deref() == Some("after")
    });
}

#[test]
fn four_messages_are_in_flight_before_an_answer_and_resent_when_none_comes() {
    let sink = Sink::start();
    let probe = probe_to(&sink, 10_000);
    sink.down();
    for i in 0..5000i64 {
        probe.send(event("window").metric(i).build());
    }
    // The sink reads (and records) what it is sent, and never answers.
    sink.set_fault(Fault::Stall);
    sink.up();
    let metrics = |sink: &Sink| -> std::collections::BTreeSet<i64> {
        sink.received()
            .iter()
            .filter_map(|e| e.metric_sint64)
            .collect()
    };
    // batch = 50: four messages of ten batches before any answer, not one (the sender may have
    // taken only some of the events on its first try; each try starts again from the oldest).
    eventually("four messages' events read", || {
        metrics(&sink).range(..2000).count() == 2000
    });
    // ...and never a fifth while none is answered.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        metrics(&sink),
        (0..2000).collect(),
        "{:?}",
        sink.message_sizes()
    );
    sink.set_fault(Fault::None);
    let st = probe.shutdown(Duration::from_secs(20));
    assert_eq!((st.sent, st.dropped, st.queued), (5000, 0, 0), "{st:?}");
    assert_eq!(metrics(&sink), (0..5000).collect());
}

#[test]
fn a_batch_the_server_refuses_is_dropped_and_counted_not_retried_for_ever() {
    let sink = Sink::start();
    let probe = probe_to(&sink, 1000);
    sink.set_fault(Fault::NotOk("no such stream".into()));
    for i in 0..10i64 {
        probe.send(event("refused").metric(i).build());
    }
    eventually("the refused batch is counted", || {
        probe.stats().dropped >= 10
    });
    sink.set_fault(Fault::None);
    probe.send(event("after").build());
    sink.wait_for(Duration::from_secs(5), |e| {
        e.service.as_deref() == Some("after")
    });
    let st = probe.shutdown(Duration::from_secs(5));
    assert!(st.dropped >= 10, "{st:?}");
}
