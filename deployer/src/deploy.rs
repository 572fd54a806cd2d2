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

use crate::canary::{self, Judgement};
use crate::config::{Config, Hook, Target, hook_commands, hooks_shown};
use crate::events;
use crate::fleet::{self, Host, Stage, each};
use crate::health::Gate;
use crate::layout::{self, HostState};
use crate::local_hook;
use crate::lock::{self, LockHeld};
use crate::manifest::{Delta, Manifest};
use crate::outcome::{Outcome, Unfinished};
use crate::report::{HookRun, HostOutcome, Report};
use crate::settings::Settings;
use crate::stages::{self, Release};
use crate::table::{bytes, table};
use crate::upload;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fmt;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
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
    #[error("the build command {command:?} failed: {message}")]
    Build { command: String, message: String },
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
    build(cfg)?;
    let manifest = Manifest::scan(&cfg.source)?;
    let user = cfg.user();
    let mut c = Ctx {
        cfg,
        first_host: targets.first().map(|t| t.name.clone()).unwrap_or_default(),
        settings,
        options,
        // The name the clock gives; a host holding a later release moves it on (rare: skew).
        release: layout::next_release(chrono::Utc::now(), std::iter::empty()),
        revision: revision(&cfg.source, &manifest, options.revision.as_deref()),
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
        let env = local_hook::Env {
            application: &cfg.application,
            release,
            revision: &revision,
            hosts: &hosts,
            outcome,
        };
        local_hook::run(
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
            back_out(&mut runs, c);
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
    each(runs, parallel, |r| lock_host(r, c));
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
    stage_all(runs, c, manifest);
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
            watch_canary(batch, c, gate, window, canary);
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

/// Watches the published first batch for `window`: every `[canary] interval` the health gate
/// runs on it and, with `[riemann]`, usersvc's errors rate and latency p99 of the new revision
/// are compared with the hosts still on the old one. Worse beyond a limit, unhealthy, or never
/// heard of in Riemann: the batch fails at `canary`. `said` gets what was compared and why the
/// deploy went on or stopped, for the report.
fn watch_canary(
    batch: &mut [Run],
    c: &Ctx,
    gate: Option<&Gate>,
    window: Duration,
    said: &mut Vec<String>,
) {
    let limits = &c.cfg.canary;
    let watched: Vec<String> = batch
        .iter()
        .flat_map(|r| [r.host.target.name.clone(), r.host.target.host.clone()])
        .collect();
    let names: Vec<&str> = batch.iter().map(|r| r.host.name()).collect();
    let shown = humantime::format_duration(window);
    c.settings.say(&format!(
        "canary: watching {} for {shown}",
        names.join(", ")
    ));
    said.push(format!("watched {} for {shown}", names.join(", ")));
    let server = c.cfg.riemann.as_ref().map(|r| r.server.as_str());
    let ends = Instant::now() + window;
    let mut last = None;
    let mut looks = 0u32;
    let stop = |batch: &mut [Run], why: &str| {
        for r in batch.iter_mut() {
            r.host.fail(Stage::Canary, why);
        }
    };
    loop {
        looks += 1;
        if let Some(gate) = gate {
            each(batch, c.settings.parallel, |r| {
                stages::health(&mut r.host, gate, &c.release(None));
            });
            if batch.iter().any(|r| !r.ok()) {
                said.push(format!("stopped: the health gate failed at look {looks}"));
                return;
            }
        }
        if let Some(server) = server {
            let judged = match canary::query(server, c.settings.ssh.timeout) {
                Ok(events) => canary::judge(
                    &canary::sample(&events, &c.revision, &watched),
                    &c.revision,
                    limits,
                ),
                Err(e) => Judgement::NoNew(format!("cannot query Riemann at {server}: {e}")),
            };
            if let Judgement::Worse(why) = &judged {
                said.push(format!("stopped: {why}"));
                stop(batch, &format!("worse than the old release: {why}"));
                return;
            }
            // A look that saw nothing does not undo one that saw the canary do well (Riemann
            // may be briefly out of reach at the last look).
            let saw = matches!(judged, Judgement::Fine(_) | Judgement::NoOld(_));
            if saw || !matches!(last, Some(Judgement::Fine(_) | Judgement::NoOld(_))) {
                last = Some(judged);
            }
        }
        let left = ends.saturating_duration_since(Instant::now());
        if left.is_zero() || c.settings.interrupted() {
            break;
        }
        let nap = Instant::now() + left.min(limits.interval);
        while Instant::now() < nap && !c.settings.interrupted() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if c.settings.interrupted() {
        said.push(format!("interrupted after {looks} looks"));
        return;
    }
    match last {
        Some(Judgement::Fine(text)) => said.push(format!("went on after {looks} looks: {text}")),
        Some(Judgement::NoOld(text)) => said.push(format!("went on after {looks} looks: {text}")),
        Some(Judgement::NoNew(text)) => {
            let why = format!(
                "{text} after {shown}: is usersvc reporting (riemann in usersvc.toml), and is the window longer than its riemann_interval?"
            );
            said.push(format!("stopped: {why}"));
            stop(batch, &why);
        }
        Some(Judgement::Worse(_)) | None => {
            said.push(format!("went on: healthy at each of {looks} looks"));
        }
    }
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

/// Runs the local build command, in the config file's directory.
fn build(cfg: &Config) -> Result<(), DeployError> {
    let Some(command) = &cfg.build else {
        return Ok(());
    };
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(&cfg.base)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| DeployError::Build {
            command: command.clone(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        return Err(DeployError::Build {
            command: command.clone(),
            message: fleet::last_lines(&text, 8).unwrap_or_else(|| out.status.to_string()),
        });
    }
    Ok(())
}

/// The revision of the source: the override, git HEAD when the source is in a checkout, else
/// the manifest's content hash.
fn revision(source: &Path, manifest: &Manifest, given: Option<&str>) -> String {
    if let Some(r) = given {
        return r.to_owned();
    }
    std::process::Command::new("git")
        .arg("-C")
        .arg(source)
        .args(["rev-parse", "--short=12", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| manifest.digest())
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

/// Starts the upload channel, then takes the lock and reads the host's state.
fn lock_host(r: &mut Run, c: &Ctx) {
    if !r.ok() {
        return;
    }
    if let Some(remote) = &r.host.remote {
        match remote.start(&upload::remote_command(r.deploy_to())) {
            Ok(ch) => r.upload = Some(ch),
            Err(e) => return r.host.fail(Stage::Connect, e),
        }
    }
    lock::acquire_waiting(&mut r.host, &c.owner, true, c.options.lock_wait);
}

/// Uploads and stages the release on every host, a progress bar per host.
fn stage_all(runs: &mut [Run], c: &Ctx, manifest: &Manifest) {
    let bars = MultiProgress::with_draw_target(if c.settings.quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let width = runs.iter().map(|r| r.host.name().len()).max().unwrap_or(0);
    let mut staging: Vec<(&mut Run, ProgressBar)> = runs
        .iter_mut()
        .map(|r| {
            let b = bars.add(ProgressBar::new(r.delta.bytes.max(1)));
            b.set_style(style.clone());
            b.set_prefix(format!("{:>width$}", r.host.name()));
            (r, b)
        })
        .collect();
    each(&mut staging, c.settings.parallel, |(r, bar)| {
        stage(r, c, manifest, bar);
        bar.finish();
    });
    drop(staging);
    let _ = bars.clear();
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

/// Uploads the release and finishes staging it on one host.
fn stage(r: &mut Run, c: &Ctx, manifest: &Manifest, bar: &ProgressBar) {
    let Some(channel) = r.upload.take() else {
        return r.host.fail(Stage::Upload, fleet::StepError::NotConnected);
    };
    r.staged = true;
    let counting = upload::Counting::new(
        std::io::BufWriter::with_capacity(256 * 1024, channel),
        Box::new({
            let bar = bar.clone();
            let stop = c.settings.interrupted.clone();
            move |n| {
                bar.inc(n);
                !stop.load(Ordering::Relaxed)
            }
        }),
    );
    let prev = r.previous_manifest.as_ref().and(r.previous.as_deref());
    let written = upload::write_release(
        counting,
        &c.cfg.source,
        manifest,
        &r.delta,
        &c.release,
        prev,
    )
    .and_then(|mut w| {
        w.flush()?;
        let sent = w.written;
        let ch = w.into_inner().into_inner().map_err(|e| e.into_error())?;
        Ok((sent, ch))
    });
    let host = r.host.name().to_owned();
    let (sent, ch) = match written {
        Ok(x) => x,
        Err(e) => {
            return r.host.fail(
                Stage::Upload,
                format_args!("connection lost while sending: {e}"),
            );
        }
    };
    r.sent_bytes = sent;
    match crate::ssh::finish(&host, ch) {
        Ok(o) if o.status == 0 => {}
        Ok(o) => {
            return r.host.fail(
                Stage::Upload,
                format_args!(
                    "tar exited {}: {}",
                    o.status,
                    fleet::last_lines(&o.stderr, 4).unwrap_or_default()
                ),
            );
        }
        Err(e) => return r.host.fail(Stage::Upload, e),
    }
    let script = layout::link_shared_script(
        r.deploy_to(),
        &c.release,
        &c.cfg.shared_dirs,
        &c.cfg.shared_files,
        &c.revision,
    );
    r.host.step(Stage::SharedLinks, &script, None);
}

/// The failure path, at any stage: every host that may have switched goes back to its previous
/// release (or loses `current` if it had none) and is restarted there by the after_publish
/// hooks, the new release marked bad; hosts that only staged it drop it. Then each host that
/// got that far logs the failure, and every lock this run holds is released.
fn back_out(runs: &mut [Run], c: &Ctx) {
    let first = runs.iter().find_map(|r| r.host.failure.clone());
    each(runs, c.settings.parallel, |r| {
        if !r.host.locked {
            return;
        }
        let d = r.deploy_to().to_owned();
        let why = r.host.failure.clone().or_else(|| first.clone());
        // A host whose own switch failed may have switched before the connection broke.
        let switched = r.published
            || r.host
                .failure
                .as_ref()
                .is_some_and(|f| f.stage == Stage::Publish);
        if switched {
            let prev = r.previous.clone();
            let reason = why
                .as_ref()
                .map(|f| format!("failed {f}"))
                .unwrap_or_default();
            let script = format!(
                "{}\n{}",
                layout::switch_script(&d, prev.as_deref()),
                layout::mark_bad_script(&d, &c.release, &reason)
            );
            if let Err(e) = r.host.run(&script, None) {
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
                return;
            }
            r.published = false;
            r.result = match &prev {
                Some(p) => format!("rolled back to {p}"),
                None => "rolled back (no previous release: current removed)".into(),
            };
            if let Some(p) = &prev {
                // Restart the previous release: the hooks see it as the release.
                let back = Release {
                    name: p,
                    revision: &c.revision,
                    previous: None,
                };
                let after = hook_commands(
                    &c.cfg.hooks.after_publish,
                    r.host.target.name == c.first_host,
                );
                let ran = stages::hooks(
                    &mut r.host,
                    Stage::Rollback,
                    &back,
                    &after,
                    c.settings.hook_timeout,
                );
                if let Some(problem) = ran.as_ref().and_then(|h| h.problem.as_ref()) {
                    r.warnings.push(format!(
                        "after_publish hooks failed on {p} after the rollback: {problem}"
                    ));
                }
                r.hooks.extend(ran);
            }
        }
        let mut script = String::new();
        if !switched && r.staged {
            script.push_str(&layout::remove_script(&d, std::slice::from_ref(&c.release)));
        }
        if switched || r.staged {
            let outcome = if switched { "rolled_back" } else { "failed" };
            let entry = stages::log_entry(&c.release(None), &c.user, outcome, why.as_ref(), None);
            script.push_str(&layout::log_script(&d, &entry));
            script.push('\n');
        }
        if let Err(e) = lock::release(&mut r.host, &c.owner, &script) {
            r.warnings.push(e.to_string());
        }
    });
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

/// What `deploy --dry-run` found: the plan, and whether a deploy now would go through.
pub struct Plan {
    text: String,
    ready: bool,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text.trim_end())
    }
}

impl Outcome for Plan {
    fn verdict(&self) -> Result<(), Unfinished> {
        if self.ready {
            Ok(())
        } else {
            Err(Unfinished::PlanFails)
        }
    }
}

/// `deploy --dry-run`: reads every host (no lock, no change) and describes what a deploy would
/// do. The build command is not run; the plan is for the source tree as it is now.
pub fn plan(
    cfg: &Config,
    targets: &[Target],
    settings: &Settings,
    options: &Options,
) -> Result<Plan, DeployError> {
    if options.canary.is_some() && cfg.health.is_none() && cfg.riemann.is_none() {
        return Err(DeployError::CanaryBlind);
    }
    let manifest = Manifest::scan(&cfg.source)?;
    let revision = revision(&cfg.source, &manifest, options.revision.as_deref());
    let shared = cfg.shared_paths();
    let hosts = fleet::read(targets, settings, true);
    let release = layout::next_release(
        chrono::Utc::now(),
        hosts
            .iter()
            .flat_map(|h| h.state.releases.iter().map(|x| x.name.as_str())),
    );
    let mut ready = true;
    let mut out = format!(
        "Plan (dry run, nothing changed): deploy {} revision {revision} ({} files) as release {release}\n",
        cfg.application,
        manifest.file_count()
    );
    if let Some(b) = &cfg.build {
        out.push_str(&format!("  build locally first: {b}\n"));
    }
    let mut rows = vec![vec![
        "HOST".to_owned(),
        "DEPLOY_TO".into(),
        "CURRENT".into(),
        "SEND".into(),
        "LINK".into(),
        "CLEANUP".into(),
        "STATUS".into(),
    ]];
    for h in &hosts {
        let st = &h.state;
        let delta = manifest.delta(previous(st).1.as_ref(), &shared);
        let status = match (&h.failure, &st.lock) {
            (Some(f), _) => format!("FAILS {f}"),
            (None, Some(l)) => format!("FAILS at lock: locked by {l}"),
            (None, None) => "ready".into(),
        };
        ready &= h.failure.is_none() && st.lock.is_none();
        let remove = layout::cleanup_after_publish(&st.releases, &release, cfg.keep_releases);
        rows.push(vec![
            h.target.name.clone(),
            h.target.deploy_to.clone(),
            st.current.clone().unwrap_or_else(|| "-".into()),
            format!("{} files, {}", delta.send.len(), bytes(delta.bytes)),
            format!("{} files", delta.link.len()),
            if remove.is_empty() {
                "-".into()
            } else {
                remove.join(" ")
            },
            status,
        ]);
    }
    out.push_str(&table(&rows));
    out.push('\n');
    let steps = [
        ("shared dirs", cfg.shared_dirs.join(", ")),
        ("shared files", cfg.shared_files.join(", ")),
        ("local_before", cfg.hooks.local_before.join(" && ")),
        ("before_publish", hooks_shown(&cfg.hooks.before_publish)),
        ("after_publish", hooks_shown(&cfg.hooks.after_publish)),
        (
            "publish",
            match (options.rolling, options.canary) {
                (n, Some(w)) => format!(
                    "canary first: {} host(s), watched for {} (health gate{}), then {}",
                    n.unwrap_or(1),
                    humantime::format_duration(w),
                    if cfg.riemann.is_some() {
                        ", and errors rate and latency p99 in Riemann against the old release"
                    } else {
                        ""
                    },
                    n.map_or("the rest at once".to_owned(), |n| format!(
                        "{n} host(s) at a time"
                    )),
                ),
                (Some(n), None) => format!("{n} host(s) at a time, health gate between batches"),
                (None, None) => "all hosts at once, once all are staged".into(),
            },
        ),
        (
            "health",
            cfg.health
                .as_ref()
                .map(|h| {
                    [
                        h.url
                            .as_ref()
                            .map(|u| format!("{u} {}", h.method.as_deref().unwrap_or("ping"))),
                        h.command.clone(),
                    ]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" and ")
                })
                .unwrap_or_default(),
        ),
    ];
    let steps = steps.into_iter().chain([
        ("local_failed", cfg.hooks.local_failed.join(" && ")),
        ("local_after", cfg.hooks.local_after.join(" && ")),
    ]);
    for (what, v) in steps {
        if !v.is_empty() {
            out.push_str(&format!("  {what}: {v}\n"));
        }
    }
    Ok(Plan { text: out, ready })
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
