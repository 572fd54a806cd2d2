//! The accept loop, what one connection may cost, and the drain.
//!
//! Bounds: a client has `header_timeout` to send a request's headers (counted from the accept,
//! or from the first byte of the next request), a keep-alive connection may sit idle between
//! requests for `idle_timeout`, and at most `max_connections` are open: at the limit, the
//! connection idle the longest (never one whose request is being served) is closed to make
//! room, so `/health` and new clients are served while slow or idle ones pile up. (The body's
//! own deadline is `http::read_body`'s; a call's is the dispatcher's.)
//!
//! The drain: once told to stop, the server stops accepting (the listener is dropped: after an
//! upgrade the new server holds the same socket and its queue, so nothing queued is lost),
//! answers every request still arriving on an open connection with `Connection: close`, closes
//! connections idle for `IDLE_GRACE`, and returns when the last one is closed. hyper's own
//! graceful shutdown closes idle keep-alive connections at once, which resets a client that is
//! sending on one at that moment.

use super::server_settings::Limits;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, watch};

/// How long a connection may sit idle after the drain began before it is closed.
const IDLE_GRACE: Duration = Duration::from_secs(1);
/// One connection's state. The request path only touches atomics (no clock): the connection's
/// watchdog, waking every `TICK`, turns what they say into times.
struct Tracked {
    /// Requests being served on it (its handler is running).
    busy: AtomicUsize,
    /// Answers sent on it so far.
    served: AtomicU64,
    /// Bytes of a request head have arrived that no handler has taken yet.
    reading: AtomicBool,
    /// Since when it has been idle, in ms since `Registry::epoch` (kept by the watchdog): the
    /// accept loop closes the longest-idle first.
    idle_since: AtomicU64,
    /// Set by the accept loop to make room (and `evict_now` woken): the watchdog closes it.
    evict: AtomicBool,
    evict_now: Notify,
}

/// How often a connection's watchdog looks: the timeouts are that precise.
const TICK: Duration = Duration::from_millis(250);

#[derive(Default)]
struct Open {
    next_id: u64,
    conns: HashMap<u64, Arc<Tracked>>,
}

struct Registry {
    epoch: Instant,
    open: Mutex<Open>,
    closed: Notify,
}

impl Registry {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn open(&self) -> std::sync::MutexGuard<'_, Open> {
        toolkit_core::lock(&self.open)
    }

    fn add(&self) -> (u64, Arc<Tracked>) {
        let tracked = Arc::new(Tracked {
            busy: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            reading: AtomicBool::new(false),
            idle_since: AtomicU64::new(self.now()),
            evict: AtomicBool::new(false),
            evict_now: Notify::new(),
        });
        let mut open = self.open();
        open.next_id += 1;
        let id = open.next_id;
        open.conns.insert(id, tracked.clone());
        (id, tracked)
    }

    fn remove(&self, id: u64) {
        self.open().conns.remove(&id);
        self.closed.notify_waiters();
    }

    fn len(&self) -> usize {
        self.open().conns.len()
    }

    /// Asks the `n` connections idle the longest (none being served) to close; how many it
    /// asked (0: every one is serving a request).
    fn evict_idlest(&self, n: usize) -> usize {
        let open = self.open();
        let mut idle: Vec<&Arc<Tracked>> = open
            .conns
            .values()
            .filter(|t| t.busy.load(Ordering::Acquire) == 0 && !t.evict.load(Ordering::Acquire))
            .collect();
        idle.sort_by_key(|t| t.idle_since.load(Ordering::Acquire));
        for t in idle.iter().take(n) {
            t.evict.store(true, Ordering::Release);
            t.evict_now.notify_one();
        }
        idle.len().min(n)
    }
}

/// What answers a request: a function from the request to its answer's future (a hyper service
/// without `Result`, since every request gets an answer).
pub(crate) trait App:
    Fn(hyper::Request<Incoming>) -> Self::Answer + Clone + Send + Sync + 'static
{
    type Answer: Future<Output = Response> + Send + 'static;
}

impl<F, A> App for F
where
    F: Fn(hyper::Request<Incoming>) -> A + Clone + Send + Sync + 'static,
    A: Future<Output = Response> + Send + 'static,
{
    type Answer = A;
}

/// Serves `app` on `listener` until `stop` resolves, then drains; returns once the last
/// connection is closed.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: impl App,
    limits: Limits,
    stop: impl Future<Output = ()>,
) {
    let draining = Arc::new(AtomicBool::new(false));
    let (drain_tx, drain_rx) = watch::channel(false);
    let registry = Arc::new(Registry {
        epoch: Instant::now(),
        open: Mutex::new(Open::default()),
        closed: Notify::new(),
    });
    let mut evicted = 0u64;
    tokio::pin!(stop);
    loop {
        // Room first: at the limit, the longest-idle connection goes; if all are busy, new
        // ones wait in the listen queue until one ends.
        if registry.len() >= limits.max_connections {
            let closed = registry.closed.notified();
            evict_for_room(&registry, &limits, &mut evicted);
            tokio::select! {
                () = &mut stop => break,
                () = closed => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            continue;
        }
        let (stream, _peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the queue keeps them.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (id, tracked) = registry.add();
        let conn = Connection {
            tracked,
            registry: registry.clone(),
            limits,
        };
        let (app, draining, drain_rx) = (app.clone(), draining.clone(), drain_rx.clone());
        let registered = Registered(registry.clone(), id);
        tokio::spawn(async move {
            // Dropped however the task ends, a panic included: a slot kept for a connection
            // gone would count against --max-connections for good, and never be evicted.
            let _registered = registered;
            conn.serve(stream, app, draining, drain_rx).await;
        });
    }
    drop(listener);
    drop(drain_rx);
    drain(&draining, drain_tx).await;
}

/// Tells every open connection to finish (`Connection: close` on what still arrives) and
/// returns when the last one has ended.
async fn drain(draining: &AtomicBool, drain_tx: watch::Sender<bool>) {
    draining.store(true, Ordering::SeqCst);
    let open = drain_tx.receiver_count();
    tracing::info!(open_connections = open, "stopped accepting; draining");
    let _ = drain_tx.send(true);
    // Every connection task holds a receiver: closed() resolves when the last one ends.
    drain_tx.closed().await;
}

/// A connection's entry in the registry, removed when this is dropped.
struct Registered(Arc<Registry>, u64);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.remove(self.1);
    }
}

/// At the connection limit: asks the longest-idle connections to close, a few at a time (a
/// flood is cleared in a few rounds, not one connection each), and logs when the count of
/// those passes a power of two (a flood is seen, not spelt out).
fn evict_for_room(registry: &Registry, limits: &Limits, evicted: &mut u64) {
    let batch = (limits.max_connections / 16).max(1);
    let asked = registry.evict_idlest(batch) as u64;
    if asked > 0 {
        let before = *evicted;
        *evicted += asked;
        if before == 0 || evicted.ilog2() != before.ilog2() {
            tracing::warn!(
                max_connections = limits.max_connections,
                evicted = *evicted,
                "connection limit reached: closing the longest-idle connections"
            );
        }
    }
}

struct Connection {
    tracked: Arc<Tracked>,
    registry: Arc<Registry>,
    limits: Limits,
}

impl Connection {
    async fn serve(
        self,
        stream: tokio::net::TcpStream,
        app: impl App,
        draining: Arc<AtomicBool>,
        mut drain: watch::Receiver<bool>,
    ) {
        let svc = counted(self.tracked.clone(), app, draining);
        let io = Watched {
            inner: stream,
            tracked: self.tracked.clone(),
        };
        let conn =
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);
        // The watchdog is a task of its own: as a branch here it was polled on every wake-up of
        // the connection, a few hundred instructions a request. It ends with the connection.
        let (said, mut closing) = tokio::sync::oneshot::channel();
        let _watchdog = AbortOnDrop(tokio::spawn(async move {
            let _ = said.send(self.watchdog().await);
        }));
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = drain.wait_for(|d| *d) => {}
            why = &mut closing => {
                tracing::debug!(why = why.unwrap_or("the watchdog ended"), "connection closed");
                return;
            }
        }
        // Draining: a request that arrives now is answered with Connection: close and ends the
        // connection; one idle past the grace is closed (graceful_shutdown closes idle ones at
        // once). A client still sending its headers is bounded by the watchdog as before.
        let finish = async {
            if tokio::time::timeout(IDLE_GRACE, conn.as_mut())
                .await
                .is_err()
            {
                conn.as_mut().graceful_shutdown();
                let _ = conn.as_mut().await;
            }
        };
        tokio::select! {
            () = finish => {}
            _ = &mut closing => {}
        }
    }

    /// Resolves when the connection has outlived its header or idle timeout (never while a
    /// request on it is being served), or was chosen to make room.
    async fn watchdog(&self) -> &'static str {
        let t = &self.tracked;
        let ms = |d: Duration| d.as_millis() as u64;
        let now = || self.registry.now();
        // A new connection is waiting for its first request head.
        let mut head_from = Some(now());
        let mut idle_from = now();
        let mut served = 0;
        loop {
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                () = t.evict_now.notified() => {
                    if t.busy.load(Ordering::Acquire) == 0 {
                        return "closed to make room (--max-connections)";
                    }
                    // A request came in after it was chosen: it is answered, and the connection
                    // may be chosen again once idle.
                    t.evict.store(false, Ordering::Release);
                }
            }
            let at = now();
            if t.busy.load(Ordering::Acquire) > 0 {
                head_from = None;
                continue;
            }
            let answered = t.served.load(Ordering::Acquire);
            if answered != served {
                served = answered;
                head_from = None;
                idle_from = at;
                t.idle_since.store(at, Ordering::Release);
            }
            if head_from.is_none() && t.reading.load(Ordering::Acquire) {
                head_from = Some(at);
            }
            match head_from {
                Some(from) if at >= from + ms(self.limits.header_timeout) => {
                    return "header timeout";
                }
                None if at >= idle_from + ms(self.limits.idle_timeout) => return "idle timeout",
                _ => {}
            }
        }
    }
}

/// `app` for one connection: each request counted busy while it is served, then served (what
/// the watchdog reads), its answer marked `Connection: close` once the drain began.
fn counted(
    tracked: Arc<Tracked>,
    app: impl App,
    draining: Arc<AtomicBool>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = Response,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> {
    hyper::service::service_fn(move |req| {
        tracked.busy.fetch_add(1, Ordering::AcqRel);
        tracked.reading.store(false, Ordering::Release);
        let (t, draining) = (tracked.clone(), draining.clone());
        // A combinator, not an async block awaiting `app(req)`: such a block keeps the answer's
        // future twice (as captured and as awaited), and hyper copies it whole as it moves it.
        futures_util::FutureExt::map(app(req), move |mut resp| {
            if draining.load(Ordering::SeqCst) {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            t.served.fetch_add(1, Ordering::AcqRel);
            t.busy.fetch_sub(1, Ordering::AcqRel);
            Ok::<_, std::convert::Infallible>(resp)
        })
    })
}

/// A task that is aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The client's socket, noting when the bytes of a new request head arrive.
struct Watched {
    inner: tokio::net::TcpStream,
    tracked: Arc<Tracked>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let t = &self.tracked;
        if buf.filled().len() > before && t.busy.load(Ordering::Acquire) == 0 {
            t.reading.store(true, Ordering::Release);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_that_panics_gives_its_slot_back() {
        let registry = Arc::new(Registry {
            epoch: Instant::now(),
            open: Mutex::new(Open::default()),
            closed: Notify::new(),
        });
        let (id, _) = registry.add();
        let registered = Registered(registry.clone(), id);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _registered = registered;
            panic!("a handler's bug");
        }));
        assert!(panicked.is_err());
        assert_eq!(registry.len(), 0);
    }
}
