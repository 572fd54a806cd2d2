//! The health document, written once: what `GET /health` answers (Nagios through check_http)
//! and the JSON-RPC `health` method returns (Nagios through check_jsonrpc: `-m health --expect
//! '/status="ok"'`), so a check of either goes CRITICAL when the store is away, writes are
//! queued, a background task died or the quarantine holds anything.

use crate::pull::PullStats;
use crate::users::Users;
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// `ok`: nothing degraded; `body`: the document (`status` says the same).
pub(crate) struct Health {
    pub ok: bool,
    pub body: Value,
}

/// Probes the store (within 2 s) and reads every degradation.
pub(crate) async fn health(users: &Users, pull: Option<&PullStats>) -> Health {
    let d = users.degradation();
    let probe = tokio::time::timeout(Duration::from_secs(2), users.store().ping()).await;
    let store_error = match probe {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(toolkit_core::redact::text(&e.to_string())),
        // The pool still waiting to connect says nothing of why: a connection of its own does.
        Err(_) => Some(
            users
                .store()
                .why_unreachable(Duration::from_secs(1))
                .await
                .unwrap_or_else(|| "store did not answer within 2s".to_owned()),
        ),
    };
    let failed_tasks = users.tasks().failed();
    let stats = users.stats();
    // Acknowledged writes that cannot be replayed wait for an operator: a state Nagios alerts on.
    let quarantined = stats.quarantined.load(Ordering::Relaxed);
    let store_ok = store_error.is_none() && !d.degraded();
    let ok = store_ok && failed_tasks.is_empty() && quarantined == 0;
    let mut body = serde_json::json!({
        "status": if ok { "ok" } else { "degraded" },
        "store": if store_ok { "ok" } else { "degraded" },
        "breaker": d.breaker.as_str(),
        "journal_depth": d.journal_depth,
        "users": users.count(),
        "snapshot": if d.from_copy { "local copy" } else { "store" },
        "queued_total": stats.queued.load(Ordering::Relaxed),
        "replayed_total": stats.replayed.load(Ordering::Relaxed),
        "replay_conflicts": stats.replay_conflicts.load(Ordering::Relaxed),
        // Journal records that could not be replayed, kept bytes intact beside the journal.
        "quarantined": quarantined,
    });
    if !failed_tasks.is_empty() {
        body["failed_tasks"] = failed_tasks.into();
    }
    if quarantined > 0 {
        body["quarantine"] = serde_json::json!({
            "records": quarantined,
            "file": crate::store::quarantine_path(users.journal_path()).display().to_string(),
            "what_to_do": "usersvc journal lists them; usersvc journal requeue N puts one back (with the server stopped)",
        });
    }
    if d.handover {
        body["journal"] = "waiting for the previous server to release it".into();
    }
    if let Some(e) = store_error {
        body["error"] = e.into();
    }
    if let Some(p) = pull {
        body["pull"] = serde_json::json!({
            "ok": p.ok.load(Ordering::Relaxed),
            "failed": p.failed.load(Ordering::Relaxed),
            "changed": p.changed.load(Ordering::Relaxed),
            "last_error": p.last_error.lock().ok().and_then(|e| e.clone()),
        });
    }
    Health { ok, body }
}
