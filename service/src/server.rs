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

use axum::Router;
use axum::http::{HeaderValue, header};
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
/// Descriptors kept for everything but client connections (store, journal, logs, upgrades).
const RESERVED_FDS: u64 = 64;

/// What one connection may cost.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// The default connection limit: the open-file limit less what the rest of the process needs.
pub(crate) fn default_max_connections() -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    soft.saturating_sub(RESERVED_FDS).clamp(16, 100_000) as usize
}

/// One connection's state, as the accept loop and its watchdog see it.
struct Tracked {
    /// Requests being served on it (its handler is running).
    busy: AtomicUsize,
    /// When the request head being received began (the accept, or the next request's first
    /// byte), in ms since `Registry::epoch`; 0 when none is.
    head_since: AtomicU64,
    /// When it last became idle (its last answer), in ms since the epoch.
    idle_since: AtomicU64,
    evict: Notify,
}

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
        // Never 0: that means "none" in `head_since`.
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn open(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self) -> (u64, Arc<Tracked>) {
        let now = self.now();
        let tracked = Arc::new(Tracked {
            busy: AtomicUsize::new(0),
            head_since: AtomicU64::new(now),
            idle_since: AtomicU64::new(now),
            evict: Notify::new(),
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

    /// Asks the connection idle the longest (none being served) to close; false if every one is
    /// serving a request.
    fn evict_idlest(&self) -> bool {
        let open = self.open();
        let idlest = open
            .conns
            .values()
            .filter(|t| t.busy.load(Ordering::Acquire) == 0)
            .min_by_key(|t| t.idle_since.load(Ordering::Acquire));
        match idlest {
            Some(t) => {
                t.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Serves `app` on `listener` until `stop` resolves, then drains; returns once the last
/// connection is closed.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
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
            if registry.evict_idlest() {
                evicted += 1;
                if evicted.is_power_of_two() {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        evicted,
                        "connection limit reached: closing the longest-idle connections"
                    );
                }
            }
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
        let registry = registry.clone();
        tokio::spawn(async move {
            conn.serve(stream, app, draining, drain_rx).await;
            registry.remove(id);
        });
    }
    drop(listener);
    drop(drain_rx);
    draining.store(true, Ordering::SeqCst);
    let open = drain_tx.receiver_count();
    tracing::info!(open_connections = open, "stopped accepting; draining");
    let _ = drain_tx.send(true);
    // Every connection task holds a receiver: closed() resolves when the last one ends.
    drain_tx.closed().await;
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
        app: Router,
        draining: Arc<AtomicBool>,
        mut drain: watch::Receiver<bool>,
    ) {
        let (start, end) = (self.clone_parts(), self.clone_parts());
        let svc = tower::ServiceExt::<axum::extract::Request<hyper::body::Incoming>>::map_request(
            app,
            move |req| {
                start.0.busy.fetch_add(1, Ordering::AcqRel);
                start.0.head_since.store(0, Ordering::Release);
                req
            },
        );
        let svc =
            tower::ServiceExt::map_response(svc, move |mut resp: axum::response::Response| {
                if draining.load(Ordering::SeqCst) {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                end.0.idle_since.store(end.1.now(), Ordering::Release);
                end.0.busy.fetch_sub(1, Ordering::AcqRel);
                resp
            });
        let io = Watched {
            inner: stream,
            tracked: self.tracked.clone(),
            registry: self.registry.clone(),
        };
        let conn = hyper::server::conn::http1::Builder::new().serve_connection(
            TokioIo::new(io),
            hyper_util::service::TowerToHyperService::new(svc),
        );
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = drain.wait_for(|d| *d) => {}
            () = self.tracked.evict.notified() => return,
            why = self.watchdog() => {
                tracing::debug!(why, "connection closed");
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
            _ = self.watchdog() => {}
        }
    }

    fn clone_parts(&self) -> (Arc<Tracked>, Arc<Registry>) {
        (self.tracked.clone(), self.registry.clone())
    }

    /// Resolves when the connection has outlived its header or idle timeout (never while a
    /// request on it is being served).
    async fn watchdog(&self) -> &'static str {
        let t = &self.tracked;
        let ms = |d: Duration| d.as_millis() as u64;
        loop {
            let now = self.registry.now();
            let head = t.head_since.load(Ordering::Acquire);
            let (deadline, why) = if t.busy.load(Ordering::Acquire) > 0 {
                (u64::MAX, "")
            } else if head > 0 {
                (head + ms(self.limits.header_timeout), "header timeout")
            } else {
                let idle = t.idle_since.load(Ordering::Acquire);
                (idle + ms(self.limits.idle_timeout), "idle timeout")
            };
            if now >= deadline {
                return why;
            }
            // State changes (a request begins or ends) are seen within a second.
            let wait = (deadline - now).clamp(10, 1000);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }
}

/// The client's socket, noting when the bytes of a new request head begin to arrive.
struct Watched {
    inner: tokio::net::TcpStream,
    tracked: Arc<Tracked>,
    registry: Arc<Registry>,
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
        if buf.filled().len() > before
            && t.busy.load(Ordering::Acquire) == 0
            && t.head_since.load(Ordering::Acquire) == 0
        {
            t.head_since.store(self.registry.now(), Ordering::Release);
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
