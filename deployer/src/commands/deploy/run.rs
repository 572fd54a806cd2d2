//! The state of one deploy run: each host's `Run` and the `Ctx` every stage shares; the
//! flow in `mod.rs` and each child read and advance it.

use super::Options;
use crate::config::{Config, Target};
use crate::delta::Delta;
use crate::fleet::{Host, Stage};
use crate::live_manifests::LiveManifests;
use crate::phases::Release;
use crate::report::{HookRun, HostOutcome, Report};
use crate::settings::Settings;
use crate::source::Tree;
use std::time::Instant;

/// One host's deploy state on top of its connection.
pub(super) struct Run {
    pub(super) host: Host,
    pub(super) upload: Option<crate::ssh::Stream>,
    /// The complete release `current` pointed at before this run.
    pub(super) previous: Option<String>,
    /// Whatever `current` pointed at before this run, complete or not: where the failure path
    /// puts it back.
    pub(super) live: Option<String>,
    pub(super) staged: bool,
    pub(super) published: bool,
    pub(super) delta: Delta,
    pub(super) sent_bytes: u64,
    pub(super) result: String,
    pub(super) warnings: Vec<String>,
    /// The remote hooks this host ran, for the report's log.
    pub(super) hooks: Vec<HookRun>,
}

impl Run {
    pub(super) fn new(host: Host) -> Self {
        Self {
            host,
            upload: None,
            previous: None,
            live: None,
            staged: false,
            published: false,
            delta: Delta::default(),
            sent_bytes: 0,
            result: "not published".into(),
            warnings: Vec::new(),
            hooks: Vec::new(),
        }
    }
    pub(super) fn deploy_to(&self) -> &str {
        &self.host.target.deploy_to
    }
    pub(super) fn ok(&self) -> bool {
        self.host.ok()
    }
}

/// What every stage of one run shares.
pub(super) struct Ctx<'a> {
    pub(super) cfg: &'a Config,
    /// Every selected host, in the config's order: where hooks limited to roles or `once` run.
    pub(super) selected: Vec<Target>,
    /// Each host's state was read by the lock step (nothing was built in between).
    pub(super) state_read: bool,
    pub(super) settings: &'a Settings,
    pub(super) options: &'a Options,
    pub(super) release: String,
    pub(super) revision: String,
    /// What Capistrano's revisions.log line calls the branch.
    pub(super) branch: String,
    pub(super) user: String,
    pub(super) owner: String,
    /// The tree being deployed and its manifest, as the host keeps it.
    pub(super) tree: Tree,
    /// The manifest's lines, made once for the hosts that take it whole (none when every host
    /// makes it from its live release's).
    pub(super) manifest_lines: std::sync::OnceLock<Vec<u8>>,
    /// Copies of hosts' live manifests: offered to the hosts, and learned as they are staged.
    pub(super) copies: &'a LiveManifests,
    /// The names every host of the deploy's events may carry in Riemann (the canary's).
    pub(super) event_hosts: Vec<String>,
}

impl Ctx<'_> {
    /// The new release, as seen from a host whose `current` was `previous`.
    pub(super) fn release<'b>(&'b self, previous: Option<&'b str>) -> Release<'b> {
        Release {
            name: &self.release,
            revision: &self.revision,
            previous,
        }
    }

    /// The end of a stage: after a signal every host still going fails at `stage`; then, if any
    /// host failed, the run stops with `why`.
    pub(super) fn barrier(
        &self,
        runs: &mut [Run],
        stage: Stage,
        why: &'static str,
    ) -> Result<(), &'static str> {
        if self.settings.interrupted() {
            for r in runs.iter_mut() {
                r.host.fail(stage, "interrupted by a signal");
            }
        }
        if runs.iter().all(Run::ok) {
            Ok(())
        } else {
            Err(why)
        }
    }

    pub(super) fn report(&self, mut runs: Vec<Run>, ok: bool, started: Instant) -> Report {
        Report {
            release: self.release.clone(),
            revision: self.revision.clone(),
            ok,
            elapsed: started.elapsed(),
            hooks: runs.iter_mut().flat_map(|r| r.hooks.drain(..)).collect(),
            hosts: runs.into_iter().map(outcome).collect(),
            stopped: None,
            show_hooks: false,
            warnings: Vec::new(),
            canary: Vec::new(),
            ssh_usage: None,
        }
    }
}

pub(super) fn outcome(r: Run) -> HostOutcome {
    HostOutcome {
        name: r.host.target.name.clone(),
        host: r.host.target.host.clone(),
        previous: r.previous,
        sent_files: r.delta.send,
        sent_bytes: r.sent_bytes,
        linked_files: r.delta.link,
        result: r.result,
        failure: r.host.failure,
        warnings: r.warnings,
    }
}
