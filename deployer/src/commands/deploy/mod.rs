//! `deployer deploy`: the Capistrano-style flow, every stage a barrier across hosts.
//!
//! connect → lock → stage (upload, then shared links + REVISION, one step) → before_publish →
//! publish (all hosts, or `--rolling N` at a time) → after_publish → health → cleanup + log +
//! unlock.
//! Invariants: nothing is published until every host is staged; a failure before publish
//! removes the staged release everywhere and leaves `current` alone; a failure after publish
//! puts every published host back on its previous release and marks the new one bad; every
//! exit path releases the locks this run took (a host that went away keeps its lock, named in
//! the report, and `deployer unlock` clears it once the host is back).
//! `deploy --dry-run` ([`plan`]) reads the hosts and describes the same flow.
//!
//! The flow is here; each part that outgrew it is a child: `run` (the run's state: `Run` per
//! host, the `Ctx` every stage shares), `tree` (the build and the tree read, every host
//! locked), `staging` (lock, upload, shared links), `publish`, `canary` (watching the first
//! batch), `back_out` (the failure path), `local_hooks` (hooks on this machine), `plan` (the
//! dry run) and `commands_shown` (its `-v`: each remote command, made by the functions the
//! deploy calls). Children see the run's state and never call one another, but for `plan`,
//! which reads the tree as `tree` does and lists the commands with `commands_shown`.

mod back_out;
mod canary;
mod commands_shown;
mod local_hooks;
mod locking;
mod plan;
mod publish;
mod run;
mod staging;
mod tree;

pub use plan::{Plan, plan};

use self::locking::lock_first;
use self::run::{Ctx, Run, outcome};
use self::tree::prepare;

use crate::build;
use crate::config::{Config, Target};
use crate::delta::Delta;
use crate::events;
use crate::fleet::{self, Stage, each};
use crate::health::Gate;
use crate::layout::{self, HostState, LiveListing};
use crate::live_manifests::LiveManifests;
use crate::lock;
use crate::report::{HookRun, Report};
use crate::settings::Settings;
use crate::source;
use std::time::{Duration, Instant};

/// What `deploy` is asked for beyond the settings every command shares.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Publish this many hosts at a time, with the health gate between batches.
    pub rolling: Option<usize>,
    /// Overrides the revision written to REVISION (default: git HEAD of the source, else a
    /// hash of its content).
    pub revision: Option<String>,
    /// Deploy this commit's version of the source directory (branch, tag or commit).
    pub git_ref: Option<String>,
    /// Deploy a source whose git work tree has uncommitted changes (revision `…-dirty`).
    pub allow_dirty: bool,
    /// Wait up to this long for a lock another deploy holds, instead of failing at once.
    pub lock_wait: Option<std::time::Duration>,
    /// Watch the first batch (`rolling` hosts, or one) this long after it publishes, with the
    /// health gate and usersvc's Riemann events against the hosts still on the old release,
    /// before publishing the rest.
    pub canary: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Build(build::BuildFailed),
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error(
        "--canary has nothing to watch with: add a [health] check and/or [riemann] server = \"host:5555\" (usersvc's events)"
    )]
    CanaryBlind,
}

impl Options {
    /// What this deploy asks of the source.
    fn choice(&self) -> source::Choice<'_> {
        source::Choice {
            git_ref: self.git_ref.as_deref(),
            allow_dirty: self.allow_dirty,
            revision: self.revision.as_deref(),
        }
    }
}

/// The whole deploy. `Err` only for problems found before any release was staged (a build
/// that failed, a source that cannot be read), with every lock this run took released; the
/// report says how every host ended. Local hooks run around it; deploy events go to
/// `[riemann] server` when set.
pub fn deploy(
    cfg: &Config,
    targets: &[Target],
    settings: &Settings,
    options: &Options,
) -> Result<Report, DeployError> {
    let started = Instant::now();
    check_canary(cfg, options)?;
    let gate = cfg.health.as_ref().and_then(Gate::new);
    let user = cfg.user();
    let owner = lock::owner_line(&user);
    let copies = LiveManifests::open(&cfg.application);
    let (mut runs, early) = lock_first(cfg, targets, settings, options, &owner, &copies)?;
    if !runs.iter().all(Run::ok) {
        settings.say("not every host could be reached and locked; nothing was changed");
        let report = stopped_early(runs, &owner, settings, None, started);
        // local_failed and local_after are for every deploy, however early it ends.
        let local = local_hooks::Local::new(cfg, settings, targets, "");
        return Ok(conclude(cfg, settings, &local, report, Vec::new(), started));
    }
    let state_read = early.is_some();
    let tree = match early.map_or_else(|| prepare(cfg, settings, options, &runs), Ok) {
        Ok(tree) => tree,
        Err(e) => {
            unlock(&mut runs, &owner, settings);
            return Err(e);
        }
    };
    let mut c = Ctx {
        cfg,
        selected: targets.to_vec(),
        state_read,
        settings,
        options,
        // The name the clock gives; a host holding a later release moves it on (rare: skew).
        release: layout::next_release(chrono::Utc::now(), std::iter::empty()),
        revision: tree.revision.clone(),
        branch: tree.branch.clone(),
        owner,
        user,
        manifest_lines: std::sync::OnceLock::new(),
        copies: &copies,
        tree,
        event_hosts: targets.iter().flat_map(|t| t.event_hosts.clone()).collect(),
    };
    let local = local_hooks::Local::new(cfg, settings, targets, &c.revision);
    let (before, stop) = local.before(&c.release);
    let report = match stop {
        Some(why) => {
            settings.say(&why);
            stopped_early(runs, &c.owner, settings, Some(why), started)
        }
        None => remote(&mut c, runs, gate.as_ref(), started),
    };
    Ok(conclude(cfg, settings, &local, report, before, started))
}

/// The end of every deploy: the local hooks that ran before it first in the report, then
/// local_failed and local_after, and the deploy events to `[riemann] server`.
fn conclude(
    cfg: &Config,
    settings: &Settings,
    local: &local_hooks::Local,
    mut report: Report,
    before: Vec<HookRun>,
    started: Instant,
) -> Report {
    report.hooks.splice(0..0, before);
    local.after(&mut report);
    report.show_hooks = settings.verbose;
    report.ssh_usage = settings.verbose.then(crate::ssh::usage);
    report.elapsed = started.elapsed();
    if let Some(r) = &cfg.riemann
        && let Err(e) = events::send(&r.server, &events::deploy_events(&cfg.application, &report))
    {
        eprintln!("warning: {e}");
    }
    report
}

/// Releases every lock this run holds; one it cannot (a host gone) is named on stderr.
fn unlock(runs: &mut [Run], owner: &str, settings: &Settings) {
    each(runs, settings.parallel, |r| {
        if let Err(e) = lock::release(&mut r.host, owner, "") {
            eprintln!("deployer: warning: {e}");
        }
    });
}

/// `--canary` needs something to watch with: a health gate that checks something, or Riemann.
fn check_canary(cfg: &Config, options: &Options) -> Result<(), DeployError> {
    let gate = cfg.health.as_ref().and_then(Gate::new);
    if options.canary.is_some() && gate.is_none() && cfg.riemann.is_none() {
        return Err(DeployError::CanaryBlind);
    }
    Ok(())
}

/// What a deploy stopped before staging reports (a host it could not reach or lock, a
/// `local_before` hook that failed): its locks released, every host not started.
fn stopped_early(
    mut runs: Vec<Run>,
    owner: &str,
    settings: &Settings,
    why: Option<String>,
    started: Instant,
) -> Report {
    unlock(&mut runs, owner, settings);
    for r in &mut runs {
        r.result = "not started".into();
    }
    Report {
        release: String::new(),
        revision: String::new(),
        ok: false,
        elapsed: started.elapsed(),
        hooks: Vec::new(),
        hosts: runs.into_iter().map(outcome).collect(),
        stopped: why,
        show_hooks: false,
        warnings: Vec::new(),
        canary: Vec::new(),
        ssh_usage: None,
    }
}

/// The remote part of the deploy, every host locked: every stage, then finish or back out.
fn remote(c: &mut Ctx, mut runs: Vec<Run>, gate: Option<&Gate>, started: Instant) -> Report {
    let settings = c.settings;
    settings.say(&format!(
        "deploying {} ({} files, revision {}) to {} host(s)",
        c.cfg.application,
        c.tree.manifest.file_count(),
        c.revision,
        runs.len()
    ));
    let mut canary = Vec::new();
    let ok = match advance(c, &mut runs, gate, &mut canary) {
        Ok(()) => {
            publish::finish(&mut runs, c);
            true
        }
        Err(why) => {
            settings.say(why);
            back_out::back_out(&mut runs, c);
            false
        }
    };
    let mut report = c.report(runs, ok, started);
    report.canary = canary;
    report
}

/// Every stage up to the last health gate; `Err` says why the run stops there.
fn advance(
    c: &mut Ctx,
    runs: &mut [Run],
    gate: Option<&Gate>,
    canary: &mut Vec<String>,
) -> Result<(), &'static str> {
    stage_everywhere(c, runs)?;
    publish_in_batches(c, runs, gate, canary)
}

/// Up to publish, on every host at once (each locked): read its state, name the release,
/// stage it, before_publish.
fn stage_everywhere(c: &mut Ctx, runs: &mut [Run]) -> Result<(), &'static str> {
    let parallel = c.settings.parallel;
    // What each host holds, its current release's listing matched against the new tree.
    let required = c.cfg.required_shared();
    let listing = LiveListing::new(&c.tree.manifest, c.copies);
    if !c.state_read {
        each(runs, parallel, |r| {
            fleet::read_state(&mut r.host, Some(listing), &required);
        });
    }
    c.barrier(
        runs,
        Stage::State,
        "not every host's state could be read; nothing was changed",
    )?;
    require_shared(c, runs)?;

    // One release name for all hosts; what each host needs.
    c.release = layout::next_release(
        layout::release_time(&c.release).unwrap_or_else(chrono::Utc::now),
        runs.iter()
            .flat_map(|r| r.host.state.releases.iter().map(|x| x.name.as_str())),
    );
    let shared = c.cfg.shared_paths();
    for r in runs.iter_mut() {
        r.live = r.host.state.current.clone();
        r.previous = previous(&r.host.state);
        let known = r.previous.as_ref().and(r.host.state.known.as_ref());
        r.delta = Delta::new(&c.tree.manifest, known, &shared);
        // One flag per file is all a host keeps of its listing once the delta is made.
        r.host.state.known = None;
    }

    c.settings.say(&format!("staging release {}", c.release));
    staging::stage_all(runs, c);
    c.barrier(
        runs,
        Stage::Upload,
        "staging failed; removing the staged release everywhere",
    )?;

    let c = &*c;
    let before = &c.cfg.hooks.before_publish;
    if !before.is_empty() {
        c.settings.say("running before_publish hooks");
        each(runs, parallel, |r| {
            publish::remote_hooks(r, c, Stage::BeforePublish, before);
        });
    }
    c.barrier(
        runs,
        Stage::BeforePublish,
        "a before_publish hook failed; removing the staged release everywhere",
    )
}

/// Publishes, in batches when rolling (the canary first, then watched); after_publish hooks
/// and the health gate per batch.
fn publish_in_batches(
    c: &Ctx,
    runs: &mut [Run],
    gate: Option<&Gate>,
    canary: &mut Vec<String>,
) -> Result<(), &'static str> {
    let count = runs.len();
    let mut start = 0;
    for (i, size) in publish::batch_sizes(count, c.options.rolling, c.options.canary.is_some())
        .into_iter()
        .enumerate()
    {
        let batch = &mut runs[start..start + size];
        c.settings.say(&if size < count {
            format!(
                "publishing {} on hosts {}-{} of {count}",
                c.release,
                start + 1,
                start + size
            )
        } else {
            format!("publishing {}", c.release)
        });
        publish::publish_batch(batch, c, gate);
        c.barrier(
            batch,
            Stage::Publish,
            "failed after publish; putting every host back on its previous release",
        )?;
        if let (0, Some(window)) = (i, c.options.canary) {
            canary::watch(batch, c, gate, window, canary);
            c.barrier(
                batch,
                Stage::Canary,
                "the canary failed; putting every host back on its previous release",
            )?;
        }
        start += size;
    }
    Ok(())
}

/// The complete release `current` points at: what unchanged files are hard-linked from.
fn previous(st: &HostState) -> Option<String> {
    st.current
        .clone()
        .filter(|cur| st.releases.iter().any(|x| &x.name == cur && x.complete))
}

/// Every host holds the shared files the config requires, or the run stops before staging.
fn require_shared(c: &Ctx, runs: &mut [Run]) -> Result<(), &'static str> {
    for r in runs.iter_mut() {
        if let Some(why) = missing_shared(&r.host.state, r.deploy_to()) {
            r.host.fail(Stage::SharedLinks, why);
        }
    }
    c.barrier(
        runs,
        Stage::SharedLinks,
        "a shared file is missing; nothing was changed",
    )
}

/// Why a host cannot be deployed to for want of a shared file; `None` when it has them all.
fn missing_shared(st: &HostState, deploy_to: &str) -> Option<String> {
    let first = st.missing_shared.first()?;
    let all = st.missing_shared.join(", ");
    Some(format!(
        "shared file(s) {all} missing in {deploy_to}/shared: create them there first, or let the release seed them (shared_files = [{{ path = \"{first}\", seed = true }}])"
    ))
}
