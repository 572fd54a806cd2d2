//! `Probe`: hand it events from any thread; it never blocks on the network, nor on a lock. A
//! bounded lock-free ring (drop-oldest when full) is drained by one background thread that sends
//! batches (N events or T ms, whichever comes first; over TCP and TLS several messages in
//! flight, each event kept until its message is answered), reconnects with truncated exponential
//! backoff and jitter, reports how many events were dropped as an event of its own, and flushes
//! on shutdown within a deadline.

use crate::client::{Client, ClientConfig};
use crate::event::event;
use crate::proto::Event;
use crossbeam_queue::ArrayQueue;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};
use toolkit_core::lock;

/// How a [`Probe`] connects, queues and batches; [`ProbeConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// The connection to Riemann.
    pub client: ClientConfig,
    /// Most events queued while Riemann is slow or away; beyond it the oldest are dropped. The
    /// sender holds at most as many again, and a drop report (those it took to send, kept while
    /// it reconnects); the ring's memory (232 bytes an event: 2.3 MB at the default) is touched
    /// at start. A capacity under `batch` sends every `flush_every` only.
    pub capacity: usize,
    /// Send when this many events are queued (a message then carries up to ten batches, when
    /// that many wait)...
    pub batch: usize,
    /// ...or when the oldest has waited this long.
    pub flush_every: Duration,
    /// Backoff after a first failed connect or send (each wait is jittered between half and
    /// all of it); it doubles with each further failure, and an answered message resets it.
    pub backoff_min: Duration,
    /// The backoff stops doubling here.
    pub backoff_max: Duration,
    /// Service name of the event that reports drops.
    pub drop_service: String,
}

impl ProbeConfig {
    /// The defaults for `client`: 10 000 events held, batches of 100 or every 100 ms, backoff
    /// from 100 ms to 10 s, drops reported as `riemann-probe dropped`.
    pub fn new(client: ClientConfig) -> Self {
        Self {
            client,
            capacity: 10_000,
            batch: 100,
            flush_every: Duration::from_millis(100),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            drop_service: "riemann-probe dropped".into(),
        }
    }
}

/// Counters since the probe started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeStats {
    /// Events the server acknowledged (over UDP: written to the socket).
    pub sent: u64,
    /// Events dropped: queue overflow, too large for a datagram, refused by the server, or
    /// left queued at shutdown (drop reports included).
    pub dropped: u64,
    /// Events waiting now: queued, or taken by the sender and not sent yet (read while the
    /// sender works, a moment's count may miss one it is moving; 0 after `shutdown`).
    pub queued: usize,
    /// Failed attempts to connect.
    pub connect_failures: u64,
    /// Sends that failed on a connection (lost, reset, no acknowledgement): retried.
    pub send_failures: u64,
}

struct Shared {
    /// Callers push here without a lock: a full ring gives back its oldest event, which the
    /// caller drops, so `send` costs a few atomic operations and a copy of the event.
    queue: ArrayQueue<Event>,
    /// The sender thread, to wake it when a batch is queued.
    sender: OnceLock<Thread>,
    /// Set while the sender sleeps waiting for a batch: callers wake it only then, since a
    /// wake-up is a system call and most `send`s find the sender busy or a batch not full.
    parked: AtomicBool,
    /// Events the sender took from the queue and has not sent yet.
    taken: AtomicUsize,
    batch: usize,
    stop: AtomicBool,
    deadline: Mutex<Option<Instant>>,
    sent: AtomicU64,
    dropped: AtomicU64,
    /// Drops not yet reported in a drop event.
    unreported: AtomicU64,
    connect_failures: AtomicU64,
    send_failures: AtomicU64,
}

impl Shared {
    fn wake_sender(&self) {
        if let Some(t) = self.sender.get() {
            t.unpark();
        }
    }
}

/// Cheap to clone; every clone feeds the same queue.
#[derive(Clone)]
pub struct Probe {
    shared: Arc<Shared>,
    worker: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Probe {
    /// Starts the background sender; it connects on its own, retrying with backoff.
    pub fn start(cfg: ProbeConfig) -> Self {
        let shared = Arc::new(Shared {
            queue: ArrayQueue::new(cfg.capacity.max(1)),
            sender: OnceLock::new(),
            parked: AtomicBool::new(false),
            taken: AtomicUsize::new(0),
            batch: cfg.batch.max(1),
            stop: AtomicBool::new(false),
            deadline: Mutex::new(None),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            send_failures: AtomicU64::new(0),
        });
        let worker_shared = shared.clone();
        let worker = std::thread::Builder::new()
            .name("riemann-probe".into())
            .spawn(move || run(worker_shared, cfg))
            .ok();
        Self {
            shared,
            worker: Arc::new(Mutex::new(worker)),
        }
    }

    /// Queues an event. Never waits, for the network or for a lock; drops the oldest queued
    /// event when full.
    pub fn send(&self, event: Event) {
        let s = &self.shared;
        if s.queue.force_push(event).is_some() {
            s.dropped.fetch_add(1, Ordering::Relaxed);
            s.unreported.fetch_add(1, Ordering::Relaxed);
        }
        // SeqCst pairs with the sender's store of `parked` before it looks at the queue: either
        // it sees this event, or this sees it parked.
        if s.parked.load(Ordering::SeqCst)
            && s.queue.len() >= s.batch
            && s.parked.swap(false, Ordering::SeqCst)
        {
            s.wake_sender();
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> ProbeStats {
        let s = &self.shared;
        ProbeStats {
            sent: s.sent.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            // Taken first (see take_queue): an event moving over is missed, never counted twice.
            queued: s.taken.load(Ordering::Acquire) + s.queue.len(),
            connect_failures: s.connect_failures.load(Ordering::Relaxed),
            send_failures: s.send_failures.load(Ordering::Relaxed),
        }
    }

    /// Sends what is queued, waiting at most `deadline`, then stops the sender. Events still
    /// queued after the deadline are counted as dropped.
    pub fn shutdown(&self, deadline: Duration) -> ProbeStats {
        *lock(&self.shared.deadline) = Some(Instant::now() + deadline);
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake_sender();
        if let Some(handle) = lock(&self.worker).take() {
            let _ = handle.join();
        }
        self.stats()
    }
}

/// Most batches one message carries when more wait. Each message costs a round trip (fewer now
/// that several are in flight): ten batches a message sent 1.7 times the events a second
/// (bench/riemann_probe.sh, one message in flight), fifty no more than ten. A message the
/// server refuses drops all it carries, so the cap stays small.
const BATCHES_PER_MESSAGE: usize = 10;

/// Messages written before the oldest one's answer is read. One at a time, the sender and the
/// server took turns, each idle while the other worked: 1.4-1.5M events/s on the bench, 1.6-1.75M
/// with 2, 4 or 8 in flight. A broken connection sends again all that was not answered, so
/// Riemann may see a message again each time a connection breaks while it is in flight (one
/// message was at risk, before).
const MESSAGES_IN_FLIGHT: usize = 4;

/// xorshift64: jitter needs no cryptographic randomness, and no dependency.
fn jitter(seed: &mut u64, max: Duration) -> Duration {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    let nanos = max.as_nanos().max(1) as u64;
    Duration::from_nanos(*seed % nanos)
}

/// Counts `n` events that will never be sent (reported as the drop event).
fn drop_counted(s: &Shared, n: usize) {
    if n > 0 {
        s.dropped.fetch_add(n as u64, Ordering::Relaxed);
        s.unreported.fetch_add(n as u64, Ordering::Relaxed);
    }
}

fn run(s: Arc<Shared>, cfg: ProbeConfig) {
    let _ = s.sender.set(std::thread::current());
    let mut tx = Sender::new(&s, &cfg);
    loop {
        let stopping = s.stop.load(Ordering::SeqCst);
        if stopping && lock(&s.deadline).is_some_and(|d| Instant::now() >= d) {
            let mut left = tx.pending.len();
            while s.queue.pop().is_some() {
                left += 1;
            }
            s.dropped.fetch_add(left as u64, Ordering::Relaxed);
            s.taken.store(0, Ordering::Release);
            return;
        }
        if tx.backing_off(&s, &cfg) {
            continue;
        }
        if tx.pending.is_empty() {
            tx.wait_for_batch(&s, &cfg);
        }
        tx.take_queue(&s);
        tx.report_dropped(&s);
        if tx.pending.is_empty() {
            if stopping {
                return;
            }
            continue;
        }
        if tx.connect(&s, &cfg) {
            tx.send_pending(&s, &cfg);
        }
    }
}

/// The sending thread's state between rounds: the connection, its backoff, and the events
/// taken from the queue but not sent yet (oldest first).
struct Sender {
    client: Option<Client>,
    backoff: Duration,
    retry_at: Instant,
    seed: u64,
    pending: VecDeque<Event>,
    drop_service: String,
}

/// The description of the event that reports drops.
const DROP_DESCRIPTION: &str = "events dropped because Riemann was slow or unreachable";

impl Sender {
    fn new(s: &Shared, cfg: &ProbeConfig) -> Self {
        Self {
            client: None,
            backoff: cfg.backoff_min,
            retry_at: Instant::now(),
            seed: 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(std::process::id()),
            // One more for the drop report.
            pending: VecDeque::with_capacity(s.queue.capacity() + 1),
            drop_service: cfg.drop_service.clone(),
        }
    }

    /// Disconnected and backing off: takes the queue (so the drop-oldest policy applies to the
    /// events kept from a failed send too), sleeps a little and says so.
    fn backing_off(&mut self, s: &Shared, cfg: &ProbeConfig) -> bool {
        let now = Instant::now();
        if self.client.is_none() && now < self.retry_at {
            self.take_queue(s);
            // Parked, not slept, and never past a shutdown's deadline: its unpark ends the wait.
            let mut until = self.retry_at.min(now + cfg.flush_every);
            if let Some(deadline) = *lock(&s.deadline) {
                until = until.min(deadline);
            }
            std::thread::park_timeout(until.saturating_duration_since(now));
            return true;
        }
        false
    }

    /// Sleeps until a batch is queued, the flush interval passes or the probe stops.
    fn wait_for_batch(&self, s: &Shared, cfg: &ProbeConfig) {
        let until = Instant::now() + cfg.flush_every;
        while s.queue.len() < s.batch && !s.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now >= until {
                break;
            }
            s.parked.store(true, Ordering::SeqCst);
            // Looked at again after saying so: a batch queued in between is not slept through.
            if s.queue.len() < s.batch && !s.stop.load(Ordering::SeqCst) {
                std::thread::park_timeout(until - now);
            }
            s.parked.store(false, Ordering::SeqCst);
        }
    }

    /// Moves the queued events behind the pending ones (at most a queue's worth, so busy
    /// callers cannot keep the sender here), dropping the oldest pending one for each beyond
    /// `capacity` as it goes: the sender's own memory never outgrows a queue's.
    fn take_queue(&mut self, s: &Shared) {
        let mut over = 0;
        for _ in 0..s.queue.capacity() {
            let Some(e) = s.queue.pop() else { break };
            // `while`, not `if`: a drop report added since the last round is over the
            // capacity too, and a report a round during a long outage would add up.
            while self.pending.len() >= s.queue.capacity() {
                match self.pending.pop_front() {
                    // A report dropped goes into the next one: Riemann's total stays whole.
                    Some(r) if self.is_report(&r) => {
                        let n = r.metric_sint64.unwrap_or(0).max(0) as u64;
                        s.unreported.fetch_add(n, Ordering::Relaxed);
                    }
                    _ => over += 1,
                }
            }
            self.pending.push_back(e);
            // After the pop, with Release: `stats` reads this first, so an event is never
            // counted both here and in the queue.
            s.taken.store(self.pending.len(), Ordering::Release);
        }
        drop_counted(s, over);
        s.taken.store(self.pending.len(), Ordering::Release);
    }

    /// Events dropped since the last report become one event of their own.
    fn report_dropped(&mut self, s: &Shared) {
        let unreported = s.unreported.swap(0, Ordering::Relaxed);
        if unreported > 0 {
            self.pending.push_back(
                event(self.drop_service.clone())
                    .state("warning")
                    .metric(unreported)
                    .description(DROP_DESCRIPTION)
                    .build(),
            );
        }
    }

    fn is_report(&self, e: &Event) -> bool {
        e.service.as_deref() == Some(self.drop_service.as_str())
            && e.description.as_deref() == Some(DROP_DESCRIPTION)
    }

    /// Connected, or connects; on failure backs off, keeping the pending events.
    fn connect(&mut self, s: &Shared, cfg: &ProbeConfig) -> bool {
        if self.client.is_some() {
            return true;
        }
        match Client::connect(&cfg.client) {
            Ok(c) => {
                self.client = Some(c);
                true
            }
            Err(_) => {
                s.connect_failures.fetch_add(1, Ordering::Relaxed);
                self.back_off(cfg);
                false
            }
        }
    }

    /// Waits half the backoff plus jitter before the next connection, and doubles the backoff.
    /// Only an answered message resets it (see `send_pending`): a server that accepts and then
    /// closes (a load balancer with no backend) is retried as slowly as one that refuses.
    fn back_off(&mut self, cfg: &ProbeConfig) {
        self.retry_at = Instant::now()
            + self.backoff / 2
            + jitter(&mut self.seed, self.backoff / 2 + Duration::from_nanos(1));
        self.backoff = (self.backoff * 2).min(cfg.backoff_max);
    }

    /// Sends the pending events in batches; a broken connection keeps the rest pending.
    fn send_pending(&mut self, s: &Shared, cfg: &ProbeConfig) {
        let Some(client) = self.client.as_mut() else {
            return;
        };
        let size = s.batch * BATCHES_PER_MESSAGE;
        let before = self.pending.len();
        let result = if client.acknowledges() {
            send_in_flight(client, &mut self.pending, s, size)
        } else {
            send_one_by_one(client, &mut self.pending, s, size)
        };
        if self.pending.len() < before {
            // The server answered: it works, whatever happens next.
            self.backoff = cfg.backoff_min;
        }
        if result.is_err() {
            s.send_failures.fetch_add(1, Ordering::Relaxed);
            self.client = None;
            self.back_off(cfg);
        }
    }
}

/// The connection broke: what was not acknowledged stays pending, to go again.
struct Broken;

/// Over TCP/TLS: up to [`MESSAGES_IN_FLIGHT`] messages of `size` events are written before
/// the oldest one's answer is read, so the server decodes one while the next is encoded and
/// sent. An event leaves `pending` only when its message is answered.
fn send_in_flight(
    client: &mut Client,
    pending: &mut VecDeque<Event>,
    s: &Shared,
    size: usize,
) -> Result<(), Broken> {
    let mut in_flight = VecDeque::with_capacity(MESSAGES_IN_FLIGHT);
    let mut written = 0;
    loop {
        while in_flight.len() < MESSAGES_IN_FLIGHT && written < pending.len() {
            let n = (pending.len() - written).min(size);
            client
                .write_events(pending.range(written..written + n))
                .map_err(|_| Broken)?;
            in_flight.push_back(n);
            written += n;
        }
        let Some(n) = in_flight.pop_front() else {
            return Ok(());
        };
        match client.acknowledgement() {
            Ok(()) => {
                s.sent.fetch_add(n as u64, Ordering::Relaxed);
            }
            // The server read the message and refused it for its content: sending it again
            // would be refused again, and hold up every event behind it.
            Err(crate::Error::Server(_)) => drop_counted(s, n),
            Err(_) => return Err(Broken),
        }
        done(pending, s, n);
        written -= n;
    }
}

/// The oldest `n` pending events are sent or dropped: they leave the sender, and `stats` sees it.
fn done(pending: &mut VecDeque<Event>, s: &Shared, n: usize) {
    pending.drain(..n);
    s.taken.store(pending.len(), Ordering::Release);
}

/// Over UDP: a message at a time, split into datagrams; an event too large for any datagram
/// is dropped and counted.
fn send_one_by_one(
    client: &mut Client,
    pending: &mut VecDeque<Event>,
    s: &Shared,
    size: usize,
) -> Result<(), Broken> {
    while !pending.is_empty() {
        let n = pending.len().min(size);
        let oversized = client
            .send(&pending.make_contiguous()[..n])
            .map_err(|_| Broken)?;
        s.sent.fetch_add((n - oversized) as u64, Ordering::Relaxed);
        drop_counted(s, oversized);
        done(pending, s, n);
    }
    Ok(())
}

/// Sends `service` every `interval` with `ttl` (3 × interval unless set), so Riemann expires it,
/// and alerts, when the sender dies.
pub struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Starts sending `service` (state `ok`, description `alive`) through `probe`, the first
    /// at once.
    pub fn start(
        probe: Probe,
        service: impl Into<String>,
        interval: Duration,
        ttl: Option<Duration>,
    ) -> Self {
        let service = service.into();
        let ttl = ttl.unwrap_or(interval.saturating_mul(3)).as_secs_f32();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("riemann-heartbeat".into())
            .spawn(move || {
                while !stopped.load(Ordering::Acquire) {
                    probe.send(
                        event(service.clone())
                            .state("ok")
                            .ttl(ttl)
                            .description("alive")
                            .build(),
                    );
                    // Sleep in slices so stop is prompt.
                    let until = Instant::now() + interval;
                    while !stopped.load(Ordering::Acquire) && Instant::now() < until {
                        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
                    }
                }
            })
            .ok();
        Self { stop, thread }
    }

    /// Stops sending and waits for the thread (the last heartbeat expires by its ttl).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_drops_the_oldest_and_never_blocks() {
        // Nothing listens there: every connect fails, events pile up.
        let mut cfg = ProbeConfig::new(ClientConfig::tcp("127.0.0.1:9"));
        cfg.capacity = 10;
        cfg.batch = 1000;
        cfg.flush_every = Duration::from_secs(60);
        let probe = Probe::start(cfg);
        let t = Instant::now();
        for i in 0..1000i64 {
            probe.send(event("x").metric(i).build());
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "send must not wait on the network"
        );
        let st = probe.stats();
        assert_eq!(st.queued, 10);
        assert_eq!(st.dropped, 990);
        // The sender sleeps (no batch of 1000 can fill a queue of 10): the queue holds the newest.
        let kept = std::iter::from_fn(|| probe.shared.queue.pop())
            .filter_map(|e| e.metric_sint64)
            .collect::<Vec<_>>();
        assert_eq!(kept, (990..1000).collect::<Vec<_>>(), "the newest are kept");
        let st = probe.shutdown(Duration::from_millis(200));
        assert_eq!(st.sent, 0);
        assert_eq!(st.queued, 0);
    }

    #[test]
    fn a_shutdown_ends_a_long_backoff_by_its_deadline() {
        let mut cfg = ProbeConfig::new(ClientConfig::tcp("127.0.0.1:9"));
        cfg.batch = 1;
        cfg.flush_every = Duration::from_secs(60);
        cfg.backoff_min = Duration::from_secs(120);
        cfg.backoff_max = Duration::from_secs(120);
        let probe = Probe::start(cfg);
        probe.send(event("x").build());
        // The connect fails at once; the sender then waits 60-120 s before the next.
        let t = Instant::now();
        while probe.stats().connect_failures == 0 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "never tried to connect"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let t = Instant::now();
        let st = probe.shutdown(Duration::from_millis(100));
        // A bound on liveness, not a speed figure: the backoff alone is a minute.
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
        assert_eq!((st.sent, st.dropped, st.queued), (0, 1, 0), "{st:?}");
    }
}
