//! Instances sharing one PostgreSQL learn of each other's writes: LISTEN on the changes channel
//! (every commit announces the ids it changed, `writer.rs`) and refresh each announced id.

use crate::shared::Shared;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// After any (re)connect, reloads everything, since notifications sent while we were not
/// listening are lost. Ends when the service closes.
pub(crate) async fn follow_changes(shared: Weak<Shared>) {
    use sqlx::postgres::PgListener;
    let Some(url) = shared.upgrade().map(|s| s.store.url().to_owned()) else {
        return;
    };
    let retry = Duration::from_millis(500);
    let closing = |s: &Shared| s.closing.load(Ordering::Acquire);
    loop {
        if shared.upgrade().is_none_or(|s| closing(&s)) {
            return;
        }
        let mut listener = match PgListener::connect(&url).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "cannot listen for other instances' writes; retrying");
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(crate::store::CHANGES_CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(retry).await;
            continue;
        }
        let Some(s) = shared.upgrade().filter(|s| !closing(s)) else {
            return;
        };
        if let Err(e) = s.reload().await {
            tracing::warn!(error = %e, "reload after (re)connect failed; retrying");
            tokio::time::sleep(retry).await;
            continue;
        }
        drop(s);
        // `None` or an error: the connection was lost; reconnect and reload what we missed.
        while let Ok(Some(n)) = listener.try_recv().await {
            let Some(s) = shared.upgrade().filter(|s| !closing(s)) else {
                return;
            };
            let done = match n.payload() {
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
