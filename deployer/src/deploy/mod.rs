//! `deployer deploy`: the Capistrano-style flow, every stage a barrier across hosts.
//!
//! connect → lock → stage (upload + shared links + REVISION) → before_publish → publish (all
//! hosts, or `--rolling N` at a time) → after_publish → health → cleanup + log + unlock.
//! Invariants: nothing is published until every host is staged; a failure before publish
//! removes the staged release everywhere and leaves `current` alone; a failure after publish
//! puts every published host back on its previous release and marks the new one bad; every
//! exit path releases the locks this run took (a host that went away keeps its lock, named in
//! the report, and `deployer unlock` clears it once the host is back).
//! `deploy --dry-run` ([`plan`]) reads the hosts and describes the same flow.
//!
//! The flow is here; each part that outgrew it is a child: `staging` (lock, upload, shared
//! links), `canary` (watching the first batch), `back_out` (the failure path), `local_hooks`
//! (hooks on this machine) and `plan` (the dry run). Children see the run's state (`Run`,
//! `Ctx`); they never call one another.

mod back_out;
mod canary;
mod local_hooks;
mod plan;
mod staging;

pub use plan::{Plan, plan};

use crate::config::{Config, Hook, Target, hook_commands};
use crate::events;
use crate::fleet::{self, Host, Stage, each};
use crate::health::Gate;
use crate::layout::{self, HostState};
use crate::lock;
use crate::manifest::{Delta, Manifest};
use crate::report::{HookRun, HostOutcome, Report};
use crate::settings::Settings;
use crate::source;
use crate::stages::{self, Release};
use std::time::{Duration, Instant};

/// What `deploy` is asked for beyond the settings every command shares.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Publish this many hosts at a time, with the health gate between batches.
    pub rolling: Option<usize>,
    /// Overrides the revision written to REVISION (default: git HEAD of the source, else a
    /// hash of its content).
    pub revision: Option<String>,
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
    Build(source::BuildFailed),
    #[error("cannot read the source tree: {0}")]
    Source(#[from] crate::manifest::ManifestError),
    #[error(
        "--canary has nothing to watch with: add a [health] check and/or [riemann] server = \"host:5555\" (usersvc's events)"
    )]
    CanaryBlind,
}

/// One host's deploy state on top of its connection.
struct Run {
    host: Host,
    upload: Option<ssh2::Channel>,
    /// The complete release `current` pointed at before this run.
    previous: Option<String>,
    previous_manifest: Option<Manifest>,
    staged: bool,
    published: bool,
    delta: Delta,
    sent_bytes: u64,
    result: String,
    warnings: Vec<String>,
    /// The remote hooks this host ran, for the report's log.
    hooks: Vec<HookRun>,
}

impl Run {
    fn new(host: Host) -> Self {
        Self {
            host,
            upload: None,
            previous: None,
            previous_manifest: None,
            staged: false,
            published: false,
            delta: Delta::default(),
            sent_bytes: 0,
            result: "not published".into(),
            warnings: Vec::new(),
            hooks: Vec::new(),
        }
    }
    fn deploy_to(&self) -> &str {
        &self.host.target.deploy_to
    }
    fn ok(&self) -> bool {
        self.host.ok()
    }
}

/// What every stage of one run shares.
struct Ctx<'a> {
    cfg: &'a Config,
    /// The first selected host: the one `once` hooks run on.
    first_host: String,
    settings: &'a Settings,
    options: &'a Options,
    release: String,
    revision: String,
    user: String,
    owner: String,
}

impl Ctx<'_> {
    /// The new release, as seen from a host whose `current` was `previous`.
    fn release<'b>(&'b self, previous: Option<&'b str>) -> Release<'b> {
        Release {
            name: &self.release,
            revision: &self.revision,
            previous,
        }
    }

    /// The end of a stage: after a signal every host still going fails at `stage`; then, if any
    /// host failed, the run stops with `why`.
    fn barrier(
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

    fn report(&self, mut runs: Vec<Run>, ok: bool, started: Instant) -> Report {
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
        }
    }
}

/// The whole deploy. `Err` only for problems found before any host was touched; the report
/// says how every host ended. Local hooks run around it; deploy events go to
/// `[riemann] server` when set.
pub fn deploy(
    cfg: &Config,
    targets: &[Target],
    settings: &Settings,
    options: &Options,
) -> Result<Report, DeployError> {
    let started = Instant::now();
    let gate = cfg.health.as_ref().and_then(Gate::new);
    if options.canary.is_some() && gate.is_none() && cfg.riemann.is_none() {
        return Err(DeployError::CanaryBlind);
    }
    source::build(cfg).map_err(DeployError::Build)?;
    let manifest = Manifest::scan(&cfg.source)?;
    let user = cfg.user();
    let mut c = Ctx {
        cfg,
        first_host: targets.first().map(|t| t.name.clone()).unwrap_or_default(),
        settings,
        options,
        // The name the clock gives; a host holding a later release moves it on (rare: skew).
        release: layout::next_release(chrono::Utc::now(), std::iter::empty()),
        revision: source::revision(&cfg.source, &manifest, options.revision.as_deref()),
        owner: lock::owner_line(&user),
        user,
    };
    let hosts = targets
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let revision = c.revision.clone();
    let never = std::sync::atomic::AtomicBool::new(false);
    let local = |stage: &'static str, commands: &[String], release: &str, outcome: &str| {
        if !commands.is_empty() {
            settings.say(&format!("running {stage} hooks here"));
        }
        let env = local_hooks::Env {
            application: &cfg.application,
            release,
            revision: &revision,
            hosts: &hosts,
            outcome,
        };
        local_hooks::run(
            stage,
            commands,
            &cfg.base,
            &env,
            settings.hook_timeout,
            // A Ctrl-C stops local_before; the hooks after the deploy still tell of it (a
            // second Ctrl-C exits at once).
            if stage == "local_before" {
                &settings.interrupted
            } else {
                &never
            },
        )
    };
    let before = local("local_before", &cfg.hooks.local_before, &c.release, "");
    let mut report = match before.iter().find_map(|h| h.problem.as_ref()) {
        Some(problem) => {
            let why = format!(
                "the local_before hook {:?} {problem}{}",
                before
                    .last()
                    .map(|h| h.command.as_str())
                    .unwrap_or_default(),
                before
                    .last()
                    .and_then(|h| fleet::last_lines(&h.output, 4))
                    .map(|l| format!(": {l}"))
                    .unwrap_or_default()
            );
            settings.say(&why);
            not_started(&c, targets, why, started)
        }
        None => remote(&mut c, targets, &manifest, gate.as_ref(), started),
    };
    report.hooks.splice(0..0, before);
    let outcome = if report.ok { "ok" } else { "failed" };
    if !report.ok {
        report.hooks.extend(local(
            "local_failed",
            &cfg.hooks.local_failed,
            &report.release,
            outcome,
        ));
    }
    report.hooks.extend(local(
        "local_after",
        &cfg.hooks.local_after,
        &report.release,
        outcome,
    ));
    for h in report.hooks.iter().filter(|h| h.host.is_none()) {
        if let (Some(problem), "local_after" | "local_failed") = (&h.problem, h.stage) {
            report
                .warnings
                .push(format!("the {} hook {:?} {problem}", h.stage, h.command));
        }
    }
    report.show_hooks = settings.verbose;
    report.elapsed = started.elapsed();
    if let Some(r) = &cfg.riemann
        && let Err(e) = events::send(&r.server, &events::deploy_events(&cfg.application, &report))
    {
        eprintln!("warning: {e}");
    }
    Ok(report)
}

/// What a deploy stopped before touching any host reports: every host not started.
fn not_started(c: &Ctx, targets: &[Target], why: String, started: Instant) -> Report {
    let hosts = targets
        .iter()
        .map(|t| HostOutcome {
            name: t.name.clone(),
            host: t.host.clone(),
            previous: None,
            sent_files: 0,
            sent_bytes: 0,
            linked_files: 0,
            result: "not started".into(),
            failure: None,
            warnings: Vec::new(),
        })
        .collect();
    let mut report = c.report(Vec::new(), false, started);
    report.hosts = hosts;
    report.stopped = Some(why);
    report
}

/// The remote part of the deploy: connect, every stage, then finish or back out.
fn remote(
    c: &mut Ctx,
    targets: &[Target],
    manifest: &Manifest,
    gate: Option<&Gate>,
    started: Instant,
) -> Report {
    let settings = c.settings;
    settings.say(&format!(
        "deploying {} ({} files, revision {}) to {} host(s)",
        c.cfg.application,
        manifest.file_count(),
        c.revision,
        targets.len()
    ));
    let mut runs: Vec<Run> = fleet::connect(targets, &settings.ssh, settings.parallel)
        .into_iter()
        .map(Run::new)
        .collect();
    let mut canary = Vec::new();
    let ok = match advance(c, &mut runs, manifest, gate, &mut canary) {
        Ok(()) => {
            finish(&mut runs, c);
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
    manifest: &Manifest,
    gate: Option<&Gate>,
    canary: &mut Vec<String>,
) -> Result<(), &'static str> {
    let parallel = c.settings.parallel;
    c.barrier(
        runs,
        Stage::Connect,
        "not every host could be reached; nothing was changed",
    )?;
    // Lock. The upload channel starts first so its session start overlaps the lock step.
    each(runs, parallel, |r| staging::lock_host(r, c));
    c.barrier(
        runs,
        Stage::Lock,
        "not every host could be locked; nothing was changed",
    )?;

    // One release name for all hosts; what each host needs.
    c.release = layout::next_release(
        layout::release_time(&c.release).unwrap_or_else(chrono::Utc::now),
        runs.iter()
            .flat_map(|r| r.host.state.releases.iter().map(|x| x.name.as_str())),
    );
    let shared = c.cfg.shared_paths();
    for r in runs.iter_mut() {
        (r.previous, r.previous_manifest) = previous(&r.host.state);
        r.delta = manifest.delta(r.previous_manifest.as_ref(), &shared);
    }

    c.settings.say(&format!("staging release {}", c.release));
    staging::stage_all(runs, c, manifest);
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
            remote_hooks(r, c, Stage::BeforePublish, before);
        });
    }
    c.barrier(
        runs,
        Stage::BeforePublish,
        "a before_publish hook failed; removing the staged release everywhere",
    )?;

    // Publish, in batches when rolling (the canary first); after_publish hooks and the health
    // gate per batch.
    let count = runs.len();
    let mut start = 0;
    for (i, size) in batch_sizes(count, c.options.rolling, c.options.canary.is_some())
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
        publish_batch(batch, c, gate);
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

/// How many hosts each publish batch has: `rolling` at a time (all at once without it); with
/// a canary, the first batch is `rolling` hosts or one, and the rest go as `rolling` says.
fn batch_sizes(count: usize, rolling: Option<usize>, canary: bool) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut left = count;
    if canary && left > 0 {
        let first = rolling.unwrap_or(1).clamp(1, left);
        sizes.push(first);
        left -= first;
    }
    let size = rolling.unwrap_or(left).max(1);
    while left > 0 {
        let n = size.min(left);
        sizes.push(n);
        left -= n;
    }
    sizes
}

/// Runs a stage's hooks on one host; one failing fails the host at `stage`.
fn remote_hooks(r: &mut Run, c: &Ctx, stage: Stage, hooks: &[Hook]) {
    let release = c.release(r.previous.as_deref());
    let commands = hook_commands(hooks, r.host.target.name == c.first_host);
    let timeout = c.settings.hook_timeout;
    if let Some(ran) = stages::hooks(&mut r.host, stage, &release, &commands, timeout) {
        if let Some(problem) = &ran.problem {
            r.host.fail(stage, problem);
        }
        r.hooks.push(ran);
    }
}

/// Publishes one batch, runs its after_publish hooks, then its health gate.
fn publish_batch(batch: &mut [Run], c: &Ctx, gate: Option<&Gate>) {
    let parallel = c.settings.parallel;
    each(batch, parallel, |r| {
        let script = layout::switch_script(r.deploy_to(), Some(&c.release));
        if r.host.step(Stage::Publish, &script, None) {
            r.published = true;
            r.result = "published".into();
        }
    });
    let after = &c.cfg.hooks.after_publish;
    if batch.iter().all(Run::ok) && !after.is_empty() {
        c.settings.say("running after_publish hooks");
        each(batch, parallel, |r| {
            remote_hooks(r, c, Stage::AfterPublish, after);
        });
    }
    if let Some(gate) = gate.filter(|_| batch.iter().all(Run::ok)) {
        c.settings.say("health gate");
        each(batch, parallel, |r| {
            stages::health(&mut r.host, gate, &c.release(None));
        });
    }
}

/// Cleanup, log and unlock: one step per host.
fn finish(runs: &mut [Run], c: &Ctx) {
    each(runs, c.settings.parallel, |r| {
        let d = r.deploy_to().to_owned();
        let remove =
            layout::cleanup_after_publish(&r.host.state.releases, &c.release, c.cfg.keep_releases);
        let entry = stages::log_entry(
            &c.release(r.previous.as_deref()),
            &c.user,
            "deployed",
            None,
            None,
        );
        let script = format!(
            "{}\n{}",
            layout::remove_script(&d, &remove),
            layout::log_script(&d, &entry),
        );
        if let Err(e) = lock::release(&mut r.host, &c.owner, &script) {
            r.warnings.push(format!(
                "published, but cleanup or unlock failed: {e}; then run `deployer cleanup --hosts {}`",
                r.host.name()
            ));
        }
    });
}

/// The complete release `current` points at, and its manifest: what unchanged files are
/// hard-linked from.
fn previous(st: &HostState) -> (Option<String>, Option<Manifest>) {
    let prev = st
        .current
        .clone()
        .filter(|cur| st.releases.iter().any(|x| &x.name == cur && x.complete));
    let manifest = match (&prev, st.manifest.as_deref()) {
        (Some(_), Some(text)) => Manifest::from_json(text).ok(),
        _ => None,
    };
    (prev, manifest)
}

fn outcome(r: Run) -> HostOutcome {
    HostOutcome {
        name: r.host.target.name.clone(),
        host: r.host.target.host.clone(),
        previous: r.previous,
        sent_files: r.delta.send.len(),
        sent_bytes: r.sent_bytes,
        linked_files: r.delta.link.len(),
        result: r.result,
        failure: r.host.failure,
        warnings: r.warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::batch_sizes;

    #[test]
    fn batches_put_the_canary_first() {
        assert_eq!(batch_sizes(5, None, false), [5]);
        assert_eq!(batch_sizes(5, Some(2), false), [2, 2, 1]);
        assert_eq!(batch_sizes(5, None, true), [1, 4]);
        assert_eq!(batch_sizes(5, Some(2), true), [2, 2, 1]);
        assert_eq!(batch_sizes(1, None, true), [1]);
        assert_eq!(batch_sizes(3, Some(9), true), [3]);
        assert!(batch_sizes(0, None, true).is_empty());
    }
}
