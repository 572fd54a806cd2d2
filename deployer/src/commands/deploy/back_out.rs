//! The failure path, at any stage after the lock.

use super::{Ctx, Run};
use crate::fleet::{Failure, Stage, each};
use crate::layout;
use crate::lock::{self, LockHeld};
use crate::phases::{self, Release};

/// The failure path, at any stage: every host that may have switched goes back to the release
/// that was live (whatever it was: complete, Capistrano's, or none at all on a first deploy)
/// and is restarted there by the after_publish hooks, the new release marked bad; hosts that only
/// staged it drop it. Then each host that
/// got that far logs the failure, and every lock this run holds is released.
pub(super) fn back_out(runs: &mut [Run], c: &Ctx) {
    let first = runs.iter().find_map(|r| r.host.failure.clone());
    each(runs, c.settings.parallel, |r| {
        if !r.host.locked {
            return;
        }
        let why = r.host.failure.clone().or_else(|| first.clone());
        // A host whose own switch failed may have switched before the connection broke.
        let switched = r.published
            || r.host
                .failure
                .as_ref()
                .is_some_and(|f| f.stage == Stage::Publish);
        if switched && !put_back(r, c, why.as_ref()) {
            return; // the lock stays: the host is not known to be back
        }
        let d = r.deploy_to().to_owned();
        let mut script = String::new();
        if !switched && r.staged {
            script.push_str(&layout::remove_script(&d, std::slice::from_ref(&c.release)));
        }
        if switched || r.staged {
            let outcome = if switched { "rolled_back" } else { "failed" };
            let release = c.release(None);
            let mut entry = phases::log_entry(&release, &c.user, &c.branch, outcome);
            entry.stage = why.as_ref().map(|f| f.stage.name());
            entry.error = why.as_ref().map(|f| f.message.as_str());
            entry.to = r.live.as_deref().filter(|_| switched);
            script.push_str(&layout::log_script(&d, &entry));
            script.push('\n');
        }
        if let Err(e) = lock::release(&mut r.host, &c.owner, &script) {
            r.warnings.push(e.to_string());
        }
    });
}

/// Switches one host back to its previous release (marking the new one bad) and restarts it
/// there. False when the switch failed: the host keeps its lock, and the report says what to
/// run once it is reachable.
fn put_back(r: &mut Run, c: &Ctx, why: Option<&Failure>) -> bool {
    let prev = r.live.clone();
    let reason = why.map(|f| format!("failed {f}")).unwrap_or_default();
    let bad = layout::mark_bad_script(r.deploy_to(), &c.release, &reason);
    if let Err(e) = phases::restore(&mut r.host, prev.as_deref(), &bad) {
        r.result = "ROLLBACK FAILED".into();
        r.warnings.push(format!(
            "could not put back {}: {e} (run `deployer rollback --hosts {}` once it is reachable)",
            prev.as_deref().unwrap_or("the previous state"),
            r.host.name()
        ));
        let held = LockHeld {
            host: r.host.name().to_owned(),
            cause: None,
        };
        r.warnings.push(held.to_string());
        return false;
    }
    r.published = false;
    r.result = match &prev {
        Some(p) => format!("rolled back to {p}"),
        None => "rolled back (first deploy: no release was live, current removed)".into(),
    };
    let Some(p) = &prev else {
        return true;
    };
    // Restart the previous release: the hooks see it, and its own revision.
    let revision = r
        .host
        .state
        .releases
        .iter()
        .find(|x| &x.name == p)
        .map(|x| x.revision.clone())
        .unwrap_or_default();
    let back = Release::new(p, &revision);
    let ran = phases::restart(
        &mut r.host,
        Stage::Rollback,
        &back,
        &c.cfg.hooks.after_publish,
        &c.selected,
        c.settings.hook_timeout,
    );
    if let Some(problem) = ran.as_ref().and_then(|h| h.problem.as_ref()) {
        r.warnings.push(format!(
            "after_publish hooks failed on {p} after the rollback: {problem}"
        ));
    }
    r.hooks.extend(ran);
    true
}
