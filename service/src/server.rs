//! The accept loop and the drain. Once told to stop, the server stops accepting (the listener is
//! dropped: after an upgrade the new server holds the same socket and its queue, so nothing
//! queued is lost), answers every request still arriving on an open connection with
//! `Connection: close`, closes connections idle for `IDLE_GRACE`, and returns when the last one
//! is closed. hyper's own graceful shutdown closes idle keep-alive connections at once, which
//! resets a client that is sending on one at that moment.

use axum::Router;
use axum::http::{HeaderValue, header};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// How long a connection may sit idle after the drain began before it is closed.
const IDLE_GRACE: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `stop` resolves, then drains; returns once the last
/// connection is closed.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    stop: impl Future<Output = ()>,
) {
    let draining = Arc::new(AtomicBool::new(false));
    let (drain_tx, drain_rx) = watch::channel(false);
    tokio::pin!(stop);
    loop {
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
        tokio::spawn(connection(
            stream,
            app.clone(),
            draining.clone(),
            drain_rx.clone(),
        ));
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

async fn connection(
    stream: tokio::net::TcpStream,
    app: Router,
    draining: Arc<AtomicBool>,
    mut drain: watch::Receiver<bool>,
) {
    let svc = tower::ServiceExt::<axum::extract::Request<hyper::body::Incoming>>::map_response(
        app,
        move |mut resp: axum::response::Response| {
            if draining.load(Ordering::SeqCst) {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        },
    );
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(
        TokioIo::new(stream),
        hyper_util::service::TowerToHyperService::new(svc),
    );
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = drain.wait_for(|d| *d) => {}
    }
    // Draining: a request that arrives now is answered with Connection: close and ends the
    // connection; one idle past the grace is closed (graceful_shutdown closes idle ones at once).
    if tokio::time::timeout(IDLE_GRACE, conn.as_mut())
        .await
        .is_err()
    {
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}
