//! `deployer unlock [--force]`: removes a stale lock of this user and machine whose process is
//! gone, or with `--force` any lock, on every selected host.

use crate::config::Target;
use crate::fleet::{self, Failure, Stage, each};
use crate::layout::{lock_holder, state_script};
use crate::lock::{force_script, is_stale_own, release_script};
use crate::outcome::{Outcome, Unfinished};
use crate::settings::Settings;
use crate::table;
use std::fmt;

/// Per host, what happened to its lock.
pub struct Unlocked {
    pub hosts: Vec<(String, Result<String, Failure>)>,
}

pub fn unlock(targets: &[Target], s: &Settings, user: &str, force: bool) -> Unlocked {
    let mut hosts = fleet::connect(targets, &s.ssh, s.parallel);
    let results = each(&mut hosts, s.parallel, |h| {
        let fail = |message: String| Failure {
            stage: Stage::Unlock,
            message,
        };
        if let Some(f) = &h.failure {
            return Err(f.clone());
        }
        let d = h.target.deploy_to.clone();
        let mut run = |script: &str| h.run(script, None).map_err(|e| fail(e.to_string()));
        let out = run(&state_script(&d, None, &[]))?;
        let Some(holder) = lock_holder(&out.stdout) else {
            return Ok("not locked".into());
        };
        if force {
            let out = run(&force_script(&d))?;
            let removed = out.stdout.trim().strip_prefix("removed=").unwrap_or("");
            return Ok(format!(
                "removed the lock of {}",
                crate::remote_text::printable(removed)
            ));
        }
        if !is_stale_own(&holder, user) {
            return Err(fail(format!(
                "locked by {holder}; not removed: it is not a stale lock of {user} on this machine (use --force if you are sure no deploy is running)"
            )));
        }
        // Compare and delete: only if the same stale holder still has it.
        let out = run(&release_script(&d, &holder))?;
        match out.stdout.trim() {
            "released" => Ok(format!("removed the stale lock of {holder}")),
            other => Err(fail(format!("the lock changed meanwhile: {other}"))),
        }
    });
    Unlocked {
        hosts: hosts
            .into_iter()
            .zip(results)
            .map(|(h, r)| (h.target.name, r))
            .collect(),
    }
}

impl fmt::Display for Unlocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = self
            .hosts
            .iter()
            .map(|(name, r)| (name.as_str(), r.as_ref().cloned()));
        f.write_str(&table::host_results(rows))
    }
}

impl Outcome for Unlocked {
    fn verdict(&self) -> Result<(), Unfinished> {
        match self.hosts.iter().filter(|(_, r)| r.is_err()).count() {
            0 => Ok(()),
            n => Err(Unfinished::StillLocked(n)),
        }
    }
}
