//! `deployer deploy`: the Capistrano-style flow, every stage a barrier across hosts.
//!
//! connect → lock → stage (upload + shared links + REVISION) → before_publish → publish (all
//! hosts, or `--rolling N` at a time) → after_publish → health → cleanup + log + unlock.
//! Invariants: nothing is published until every host is staged; a failure before publish
//! removes the staged release everywhere and leaves `current` alone; a failure after publish
//! puts every published host back on its previous release and marks the new one bad; every
//! exit path releases the locks this run took (a host that went away keeps its lock, named in
//! the report, and `deployer unlock` clears it once the host is back).

use crate::config::{Config, Target};
use crate::fleet::{self, Failure, Host, each};
use crate::health::Gate;
use crate::layout::{self, HostState, LogEntry};
use crate::lock;
use crate::manifest::{Delta, Manifest};
use crate::ssh::SshSettings;
use crate::upload;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How a run behaves, from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ssh: SshSettings,
    pub parallel: usize,
    /// Publish this many hosts at a time, with the health gate between batches.
    pub rolling: Option<usize>,
    pub hook_timeout: Duration,
    /// Overrides the revision written to REVISION (default: git HEAD of the source, else a
    /// hash of its content).
    pub revision: Option<String>,
    /// No stage headings or progress bars on stderr.
    pub quiet: bool,
    /// Set on SIGINT/SIGTERM: the run stops at the next stage boundary (or mid-upload) and
    /// takes the failure path, so nothing is left half-done or locked.
    pub interrupted: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("the build command {command:?} failed: {message}")]
    Build { command: String, message: String },
    #[error("cannot read the source tree: {0}")]
    Source(#[from] crate::manifest::ManifestError),
    #[error("{0}")]
    Config(String),
}

/// Per host, what happened.
#[derive(Debug, Clone)]
pub struct HostOutcome {
    pub name: String,
    pub host: String,
    pub previous: Option<String>,
    pub sent_files: usize,
    pub sent_bytes: u64,
    pub linked_files: usize,
    /// `published`, `not published`, `rolled back to …`, …
    pub result: String,
    pub failure: Option<Failure>,
    /// Things left for the user (a lock on an unreachable host, a failed cleanup).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub release: String,
    pub revision: String,
    pub hosts: Vec<HostOutcome>,
    pub ok: bool,
    pub elapsed: Duration,
}

impl Report {
    /// The first failure, as `host at stage: message`.
    pub fn failure(&self) -> Option<String> {
        self.hosts.iter().find_map(|h| {
            h.failure
                .as_ref()
                .map(|f| format!("{} at {}: {}", h.name, f.stage, f.message))
        })
    }
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
        }
    }
    fn d(&self) -> &str {
        &self.host.target.deploy_to
    }
    fn ok(&self) -> bool {
        self.host.failure.is_none()
    }
}

/// What every stage of one run shares.
struct Ctx<'a> {
    cfg: &'a Config,
    s: &'a Settings,
    release: String,
    revision: String,
    user: String,
    owner: String,
}

impl Ctx<'_> {
    fn entry<'b>(&'b self, outcome: &'b str, failure: Option<&'b Failure>) -> LogEntry<'b> {
        LogEntry {
            release: &self.release,
            revision: &self.revision,
            user: &self.user,
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            outcome,
            stage: failure.map(|f| f.stage),
            error: failure.map(|f| f.message.as_str()),
            from: None,
        }
    }

    /// After a signal: every host still going fails at `stage`, so the caller aborts.
    fn stop_if_interrupted(&self, runs: &mut [Run], stage: &'static str) {
        if self.s.interrupted.load(Ordering::Relaxed) {
            for r in runs.iter_mut() {
                r.host.fail(stage, "interrupted by a signal");
            }
        }
    }

    fn say(&self, text: &str) {
        if !self.s.quiet {
            eprintln!("deployer: {text}");
        }
    }

    fn report(&self, runs: Vec<Run>, ok: bool, started: Instant) -> Report {
        Report {
            release: self.release.clone(),
            revision: self.revision.clone(),
            ok,
            elapsed: started.elapsed(),
            hosts: runs.into_iter().map(outcome).collect(),
        }
    }
}

/// Runs the local build command, in the config file's directory.
pub fn build(cfg: &Config) -> Result<(), DeployError> {
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
pub fn revision(source: &Path, manifest: &Manifest, given: Option<&str>) -> String {
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

/// The whole deploy. `Err` only for problems found before any host was touched.
pub fn deploy(cfg: &Config, targets: &[Target], s: &Settings) -> Result<Report, DeployError> {
    let started = Instant::now();
    let gate = match &cfg.health {
        Some(h) => Gate::new(h).map_err(DeployError::Config)?,
        None => None,
    };
    build(cfg)?;
    let manifest = Manifest::scan(&cfg.source)?;
    let user = cfg.user();
    let mut c = Ctx {
        cfg,
        s,
        release: String::new(),
        revision: revision(&cfg.source, &manifest, s.revision.as_deref()),
        owner: lock::owner_line(&user),
        user,
    };
    let shared = cfg.shared_paths();
    let p = s.parallel;
    c.say(&format!(
        "deploying {} ({} files, revision {}) to {} host(s)",
        cfg.application,
        manifest.file_count(),
        c.revision,
        targets.len()
    ));
    let mut runs: Vec<Run> = fleet::connect(targets, &s.ssh, p)
        .into_iter()
        .map(Run::new)
        .collect();

    if runs.iter().any(|r| !r.ok()) {
        c.say("not every host could be reached; nothing was changed");
        return Ok(c.report(runs, false, started));
    }
    // Lock. The upload channel starts first so its session start overlaps the lock step.
    each(&mut runs, p, |r| lock_host(r, &c));
    c.stop_if_interrupted(&mut runs, "lock");
    if runs.iter().any(|r| !r.ok()) {
        c.say("not every host could be locked; nothing was changed");
        back_out(&mut runs, &c);
        return Ok(c.report(runs, false, started));
    }

    // One release name for all hosts; what each host needs.
    c.release = layout::next_release(
        chrono::Utc::now(),
        runs.iter()
            .flat_map(|r| r.host.state.releases.iter().map(|x| x.name.as_str())),
    );
    for r in &mut runs {
        (r.previous, r.previous_manifest) = previous(&r.host.state);
        r.delta = manifest.delta(r.previous_manifest.as_ref(), &shared);
    }

    // Stage: upload, shared links, REVISION.
    c.say(&format!("staging release {}", c.release));
    let bars = MultiProgress::with_draw_target(if s.quiet {
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
    each(&mut staging, p, |(r, bar)| {
        stage(r, &c, &manifest, bar);
        bar.finish();
    });
    drop(staging);
    let _ = bars.clear();
    c.stop_if_interrupted(&mut runs, "upload");
    if runs.iter().any(|r| !r.ok()) {
        c.say("staging failed; removing the staged release everywhere");
        back_out(&mut runs, &c);
        return Ok(c.report(runs, false, started));
    }

    if !cfg.hooks.before_publish.is_empty() {
        c.say("running before_publish hooks");
        each(&mut runs, p, |r| {
            let script = layout::hooks_script(
                r.d(),
                &c.release,
                r.previous.as_deref(),
                &c.revision,
                &cfg.hooks.before_publish,
            );
            if let Err(e) = r.host.run(&script, Some(s.hook_timeout)) {
                r.host.fail("before_publish", e);
            }
        });
        c.stop_if_interrupted(&mut runs, "before_publish");
        if runs.iter().any(|r| !r.ok()) {
            c.say("a before_publish hook failed; removing the staged release everywhere");
            back_out(&mut runs, &c);
            return Ok(c.report(runs, false, started));
        }
    }

    // Publish, in batches when rolling; after_publish hooks and the health gate per batch.
    let count = runs.len();
    let batch = s.rolling.unwrap_or(count).clamp(1, count.max(1));
    for start in (0..count).step_by(batch) {
        let end = (start + batch).min(count);
        c.say(&if batch < count {
            format!(
                "publishing {} on hosts {}-{end} of {count}",
                c.release,
                start + 1
            )
        } else {
            format!("publishing {}", c.release)
        });
        publish_batch(&mut runs[start..end], &c, gate.as_ref());
        c.stop_if_interrupted(&mut runs[start..end], "publish");
        if runs.iter().any(|r| !r.ok()) {
            c.say("failed after publish; putting every host back on its previous release");
            back_out(&mut runs, &c);
            return Ok(c.report(runs, false, started));
        }
    }

    // Cleanup, log and unlock: one step per host.
    each(&mut runs, p, |r| {
        let d = r.d().to_owned();
        let remove =
            layout::cleanup_after_publish(&r.host.state.releases, &c.release, cfg.keep_releases);
        let script = format!(
            "{}\n{}",
            layout::remove_script(&d, &remove),
            layout::log_script(&d, &c.entry("deployed", None)),
        );
        if let Err(e) = lock::release(&mut r.host, &c.owner, &script) {
            r.warnings.push(format!(
                "published, but cleanup or unlock failed: {e}; then run `deployer cleanup --hosts {}`",
                r.host.name()
            ));
        }
    });
    Ok(c.report(runs, true, started))
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
        match remote.start(&upload::remote_command(r.d())) {
            Ok(ch) => r.upload = Some(ch),
            Err(e) => return r.host.fail("connect", e.to_string()),
        }
    }
    lock::acquire(&mut r.host, &c.owner, true);
}

/// Publishes one batch, runs its after_publish hooks, then its health gate.
fn publish_batch(batch: &mut [Run], c: &Ctx, gate: Option<&Gate>) {
    let p = c.s.parallel;
    each(batch, p, |r| {
        let script = layout::switch_script(r.d(), Some(&c.release));
        match r.host.run(&script, None) {
            Ok(_) => {
                r.published = true;
                r.result = "published".into();
            }
            Err(e) => r.host.fail("publish", e),
        }
    });
    if batch.iter().all(Run::ok) && !c.cfg.hooks.after_publish.is_empty() {
        c.say("running after_publish hooks");
        each(batch, p, |r| {
            let script = layout::hooks_script(
                r.d(),
                &c.release,
                r.previous.as_deref(),
                &c.revision,
                &c.cfg.hooks.after_publish,
            );
            if let Err(e) = r.host.run(&script, Some(c.s.hook_timeout)) {
                r.host.fail("after_publish", e);
            }
        });
    }
    if let Some(gate) = gate.filter(|_| batch.iter().all(Run::ok)) {
        c.say("health gate");
        each(batch, p, |r| {
            let subject = crate::health::Subject {
                host: &r.host.target.host,
                release: &c.release,
                revision: &c.revision,
            };
            if let Err(e) = gate.wait_healthy(&subject) {
                r.host.fail("health", e);
            }
        });
    }
}

/// Uploads the release and finishes staging it on one host.
fn stage(r: &mut Run, c: &Ctx, manifest: &Manifest, bar: &ProgressBar) {
    let Some(channel) = r.upload.take() else {
        return r.host.fail("upload", "not connected");
    };
    r.staged = true;
    let counting = upload::Counting::new(
        std::io::BufWriter::with_capacity(256 * 1024, channel),
        Box::new({
            let bar = bar.clone();
            let stop = c.s.interrupted.clone();
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
            return r
                .host
                .fail("upload", format!("connection lost while sending: {e}"));
        }
    };
    r.sent_bytes = sent;
    match crate::ssh::finish(&host, ch) {
        Ok(o) if o.status == 0 => {}
        Ok(o) => {
            return r.host.fail(
                "upload",
                format!(
                    "tar exited {}: {}",
                    o.status,
                    fleet::last_lines(&o.stderr, 4).unwrap_or_default()
                ),
            );
        }
        Err(e) => return r.host.fail("upload", e.to_string()),
    }
    let script = layout::link_shared_script(
        r.d(),
        &c.release,
        &c.cfg.shared_dirs,
        &c.cfg.shared_files,
        &c.revision,
    );
    if let Err(e) = r.host.run(&script, None) {
        r.host.fail("shared links", e);
    }
}

/// The failure path, at any stage: every host that may have switched goes back to its previous
/// release (or loses `current` if it had none) and is restarted there by the after_publish
/// hooks, the new release marked bad; hosts that only staged it drop it. Then each host that
/// got that far logs the failure, and every lock this run holds is released.
fn back_out(runs: &mut [Run], c: &Ctx) {
    let first = runs.iter().find_map(|r| r.host.failure.clone());
    each(runs, c.s.parallel, |r| {
        if !r.host.locked {
            return;
        }
        let d = r.d().to_owned();
        let why = r.host.failure.clone().or_else(|| first.clone());
        let reason = why
            .as_ref()
            .map(|f| format!("{} failed: {}", f.stage, f.message))
            .unwrap_or_default();
        let switched = r.published || why.as_ref().is_some_and(|f| f.stage == "publish");
        if switched {
            let prev = r.previous.clone();
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
                return;
            }
            r.published = false;
            r.result = match &prev {
                Some(p) => format!("rolled back to {p}"),
                None => "rolled back (no previous release: current removed)".into(),
            };
            if let (Some(p), false) = (&prev, c.cfg.hooks.after_publish.is_empty()) {
                let script =
                    layout::hooks_script(&d, p, None, &c.revision, &c.cfg.hooks.after_publish);
                if let Err(e) = r.host.run(&script, Some(c.s.hook_timeout)) {
                    r.warnings.push(format!(
                        "after_publish hooks failed on {p} after the rollback: {e}"
                    ));
                }
            }
        }
        let mut script = String::new();
        if !switched && r.staged {
            script.push_str(&layout::remove_script(&d, std::slice::from_ref(&c.release)));
        }
        if switched || r.staged {
            let outcome = if switched { "rolled_back" } else { "failed" };
            script.push_str(&layout::log_script(&d, &c.entry(outcome, why.as_ref())));
            script.push('\n');
        }
        release_lock(r, c, &script);
    });
}

/// Runs the last step of a failed run, which ends by releasing the lock.
fn release_lock(r: &mut Run, c: &Ctx, before: &str) {
    if let Err(e) = lock::release(&mut r.host, &c.owner, before) {
        r.warnings.push(e);
    }
}

fn outcome(r: Run) -> HostOutcome {
    let mut warnings = r.warnings;
    if r.host.locked && !warnings.iter().any(|w| w.contains("unlock")) {
        warnings.push(format!(
            "the lock on {} is still held: run `deployer unlock --hosts {}` once it is reachable",
            r.host.name(),
            r.host.name()
        ));
    }
    HostOutcome {
        name: r.host.target.name.clone(),
        host: r.host.target.host.clone(),
        previous: r.previous,
        sent_files: r.delta.send.len(),
        sent_bytes: r.sent_bytes,
        linked_files: r.delta.link.len(),
        result: r.result,
        failure: r.host.failure,
        warnings,
    }
}

/// `deploy --dry-run`: reads every host (no lock, no change) and describes what a deploy would
/// do. The build command is not run; the plan is for the source tree as it is now.
pub fn plan(cfg: &Config, targets: &[Target], s: &Settings) -> Result<(String, bool), DeployError> {
    let manifest = Manifest::scan(&cfg.source)?;
    let revision = revision(&cfg.source, &manifest, s.revision.as_deref());
    let shared = cfg.shared_paths();
    let hosts = crate::releases::list_with_manifests(targets, s);
    let release = layout::next_release(
        chrono::Utc::now(),
        hosts
            .iter()
            .flat_map(|h| h.state.releases.iter().map(|x| x.name.as_str())),
    );
    let mut ok = true;
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
            (Some(f), _) => format!("FAILS at {}: {}", f.stage, f.message),
            (None, Some(l)) => format!("FAILS at lock: locked by {l}"),
            (None, None) => "ready".into(),
        };
        ok &= status == "ready";
        let remove = layout::cleanup_after_publish(&st.releases, &release, cfg.keep_releases);
        rows.push(vec![
            h.target.name.clone(),
            h.target.deploy_to.clone(),
            st.current.clone().unwrap_or_else(|| "-".into()),
            format!(
                "{} files, {}",
                delta.send.len(),
                crate::report::bytes(delta.bytes)
            ),
            format!("{} files", delta.link.len()),
            if remove.is_empty() {
                "-".into()
            } else {
                remove.join(" ")
            },
            status,
        ]);
    }
    out.push_str(&crate::report::table(&rows));
    out.push('\n');
    let steps = [
        ("shared dirs", cfg.shared_dirs.join(", ")),
        ("shared files", cfg.shared_files.join(", ")),
        ("before_publish", cfg.hooks.before_publish.join(" && ")),
        ("after_publish", cfg.hooks.after_publish.join(" && ")),
        (
            "publish",
            match s.rolling {
                Some(n) => format!("{n} host(s) at a time, health gate between batches"),
                None => "all hosts at once, once all are staged".into(),
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
    for (what, v) in steps {
        if !v.is_empty() {
            out.push_str(&format!("  {what}: {v}\n"));
        }
    }
    Ok((out, ok))
}
