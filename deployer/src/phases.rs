//! The phases `deploy` and `rollback` share, each on one host: the hooks, the health gate, and
//! the `revisions.log` entry. A command runs them on every host with [`crate::fleet::each`].

use crate::config::{Hook, Target, hook_commands};
use crate::fleet::{Host, Stage, StepError, failed};
use crate::health::{Gate, Subject};
use crate::layout::{self, LogEntry};
use crate::report::HookRun;
use std::time::Duration;

/// The release a stage is about, on one host.
#[derive(Debug, Clone, Copy)]
pub struct Release<'a> {
    pub name: &'a str,
    pub revision: &'a str,
    /// What `current` pointed at before (for the hooks' `$PREVIOUS_RELEASE`).
    pub previous: Option<&'a str>,
}

impl<'a> Release<'a> {
    /// A release with no previous one to tell the hooks about.
    pub fn new(name: &'a str, revision: &'a str) -> Self {
        Self {
            name,
            revision,
            previous: None,
        }
    }
}

/// Runs `commands` in the release's directory, one after the other; the first that fails
/// stops them (its `problem` says why: the caller decides what that means for the host). What
/// they printed is returned for the report's log; no commands: nothing runs, `None`.
pub fn hooks(
    host: &mut Host,
    stage: Stage,
    release: &Release,
    commands: &[String],
    timeout: Duration,
) -> Option<HookRun> {
    if commands.is_empty() {
        return None;
    }
    let script = layout::hooks_script(
        &host.target.deploy_to,
        release.name,
        release.previous,
        release.revision,
        commands,
        timeout,
    );
    // The host kills a hook at `timeout`; this is the deployer's own bound, should it not.
    let whole = timeout
        .saturating_add(Duration::from_secs(5))
        .saturating_mul(commands.len() as u32);
    let (problem, output) = match host.run_output(&script, Some(whole)) {
        Ok(o) if o.status == 0 => (None, o.stdout),
        Ok(o) => (Some(failed(&o)), o.stdout),
        Err(e) => (Some(e), String::new()),
    };
    Some(HookRun {
        stage: stage.name(),
        host: Some(host.name().to_owned()),
        command: commands.join("; "),
        problem: problem.map(|e| e.to_string()),
        output,
    })
}

/// Points `current` at the complete release `to`.
pub fn switch(host: &mut Host, to: &str) -> Result<(), StepError> {
    host.run(&layout::switch_script(&host.target.deploy_to, to), None)
        .map(drop)
}

/// Puts `current` back at `live`, what it pointed at before (`None`: there was nothing, so it
/// is removed), with `also` (a bad mark) in the same step.
pub fn restore(host: &mut Host, live: Option<&str>, also: &str) -> Result<(), StepError> {
    let script = format!(
        "{}\n{also}",
        layout::restore_script(&host.target.deploy_to, live)
    );
    host.run(&script, None).map(drop)
}

/// Restarts the service on `release`, which `current` now points at: the after_publish hooks
/// run there (those limited to roles or `once` where they say). The one "switch back and
/// restart" step the failure path and `rollback` share.
pub fn restart(
    host: &mut Host,
    stage: Stage,
    release: &Release,
    after_publish: &[Hook],
    selected: &[Target],
    timeout: Duration,
) -> Option<HookRun> {
    let commands = hook_commands(after_publish, &host.target, selected);
    hooks(host, stage, release, &commands, timeout)
}

/// The health gate on one host: the release that should now answer there does, or the host
/// fails at `health`.
pub fn health(host: &mut Host, gate: &Gate, release: &Release) {
    let subject = Subject {
        host: &host.target.host,
        release: release.name,
        revision: release.revision,
    };
    if let Err(e) = gate.wait_healthy(&subject) {
        host.fail(Stage::Health, e);
    }
}

/// One record of `release` for the host's logs, stamped now: `outcome` by `user`, the
/// `branch` as Capistrano's line names it. Callers add the stage, error and releases moved
/// between.
pub fn log_entry<'a>(
    release: &Release<'a>,
    user: &'a str,
    branch: &'a str,
    outcome: &'a str,
) -> LogEntry<'a> {
    LogEntry {
        release: release.name,
        revision: release.revision,
        branch,
        user,
        time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        outcome,
        stage: None,
        error: None,
        from: None,
        to: None,
    }
}
