//! Instances sharing one PostgreSQL learn of each other's writes: LISTEN on the changes channel
//! (every commit announces the ids it changed, `store/writer.rs`) and refresh each announced id. An
//! instance's own announcements (sent by its write connection's backend) are skipped: its
//! snapshot has them already.

use super::state::Shared;
use sqlx::postgres::PgListener;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A listener on the changes channel, or `None` when it cannot be had within `within`.
pub(crate) async fn listen(url: &str, within: Duration) -> Option<PgListener> {
    let attempt = async {
        let mut listener = PgListener::connect(url).await?;
        // A lost connection is ours to handle: reconnecting in `try_recv` would retry this URL
        // for its pool's 30 s, where after a failover the next host is the one to try.
        listener.eager_reconnect(false);
        listener.listen(crate::store::CHANGES_CHANNEL).await?;
        Ok::<_, sqlx::Error>(listener)
    };
    match tokio::time::timeout(within, attempt).await {
        Ok(Ok(listener)) => Some(listener),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cannot listen for other instances' writes");
            None
        }
        Err(_) => {
            tracing::debug!("cannot listen for other instances' writes: timed out");
            None
        }
    }
}

/// Follows other instances' writes. `early`: a listener that was listening before the snapshot
/// was loaded, so nothing was missed and no reload is needed; after any later (re)connect,
/// everything is reloaded, since notifications sent while no one listened are lost. Ends when
/// the service closes.
pub(crate) async fn follow_changes(shared: Weak<Shared>, mut early: Option<PgListener>) {
    let retry = Duration::from_millis(500);
    let closing = |s: &Shared| s.closing.load(Ordering::Acquire);
    loop {
        if shared.upgrade().is_none_or(|s| closing(&s)) {
            return;
        }
        let mut listener = match early.take() {
            Some(l) => l,
            None => {
                // The store's host in use now: after a failover, the promoted standby.
                let Some(url) = shared.upgrade().map(|s| s.store.url().to_owned()) else {
                    return;
                };
                let Some(l) = listen(&url, retry * 4).await else {
                    if let Some(s) = shared.upgrade() {
                        s.store.find_host().await;
                    }
                    tokio::time::sleep(retry).await;
                    continue;
                };
                let Some(s) = shared.upgrade().filter(|s| !closing(s)) else {
                    return;
                };
                if let Err(e) = s.reload().await {
                    tracing::warn!(error = %e, "reload after (re)connect failed; retrying");
                    tokio::time::sleep(retry).await;
                    continue;
                }
                l
            }
        };
        // `None` or an error: the connection was lost; reconnect and reload what we missed.
        while let Ok(Some(n)) = listener.try_recv().await {
            let Some(s) = shared.upgrade().filter(|s| !closing(s)) else {
                return;
            };
            let done = match n.payload() {
                // This process's own write: its snapshot has it already.
                _ if s.store.announced_by_me(n.process_id()) => Ok(()),
                "*" => s.reload().await,
                id => s.refresh(id).await,
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, "refresh after a notification failed");
                break;
            }
        }
        tokio::time::sleep(retry).await;
    }
}
