//! Staging, on every host: the lock (with the upload channel opened first, so its session
//! start overlaps the lock step), then the tar stream of the release, whose last entry is the
//! script that makes its shared links and REVISION (run by the same remote command), a progress
//! bar per host.

use super::{Ctx, Run};
use crate::fleet::{self, Stage, each};
use crate::layout;
use crate::lock;
use crate::upload;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Starts the upload channel (its session start overlaps the lock step), then takes the lock,
/// waiting up to `wait` for another deploy's, and reads what `ask` asks.
pub(super) fn lock_host(
    r: &mut Run,
    owner: &str,
    wait: Option<std::time::Duration>,
    ask: lock::Ask,
) {
    if !r.ok() {
        return;
    }
    if let Some(remote) = &r.host.remote {
        match remote.start_stream(&upload::remote_command(r.deploy_to())) {
            Ok(ch) => r.upload = Some(ch),
            Err(e) => return r.host.fail(Stage::Connect, e),
        }
    }
    lock::acquire_waiting(&mut r.host, owner, ask, wait);
}

/// Hosts up to which each gets a progress bar of its own; past it, one bar counts them all.
const BARS_MAX: usize = 8;

/// Uploads and stages the release on every host: a progress bar per host, or for a fleet one
/// bar of all the bytes with the hosts done, failed and running.
pub(super) fn stage_all(runs: &mut [Run], c: &Ctx) {
    let bars = MultiProgress::with_draw_target(if c.settings.quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    let fleet = (runs.len() > BARS_MAX).then(|| fleet_bar(&bars, runs));
    let style = bar_style("");
    let width = runs.iter().map(|r| r.host.name().len()).max().unwrap_or(0);
    let mut staging: Vec<(&mut Run, ProgressBar)> = runs
        .iter_mut()
        .map(|r| {
            let b = match &fleet {
                Some(f) => f.bar.clone(),
                None => bars.add(ProgressBar::new(r.delta.bytes.max(1))),
            };
            if fleet.is_none() {
                b.set_style(style.clone());
                b.set_prefix(format!("{:>width$}", r.host.name()));
            }
            (r, b)
        })
        .collect();
    each(&mut staging, c.settings.parallel, |(r, bar)| {
        if let Some(f) = &fleet {
            f.started();
        }
        stage(r, c, bar);
        match &fleet {
            Some(f) => f.ended(r.ok()),
            None => bar.finish(),
        }
        // Off a terminal the bars are not drawn: a line per host says what it was sent.
        if bar.is_hidden() && r.ok() {
            c.settings.say(&format!(
                "{}: staged: {} files sent ({}), {} linked{}",
                r.host.name(),
                r.delta.send,
                crate::table::bytes(r.sent_bytes),
                r.delta.link,
                if r.host.state.listed_from_copy {
                    " (its live manifest known here by its SHA-256, not sent)"
                } else {
                    ""
                }
            ));
        }
    });
    drop(staging);
    if let Some(f) = &fleet {
        f.bar.finish();
    }
    let _ = bars.clear();
}

fn bar_style(msg: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{{prefix}} [{{bar:30}}] {{bytes:>10}}/{{total_bytes:<10}} {{bytes_per_sec:>12}}{msg}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

/// One bar for a fleet: every host's bytes, and how many hosts are done, failed and running.
struct FleetBar {
    bar: ProgressBar,
    total: usize,
    running: AtomicUsize,
    done: AtomicUsize,
    failed: AtomicUsize,
}

fn fleet_bar(bars: &MultiProgress, runs: &[Run]) -> FleetBar {
    let bytes: u64 = runs.iter().map(|r| r.delta.bytes).sum();
    let bar = bars.add(ProgressBar::new(bytes.max(1)));
    bar.set_style(bar_style("  {msg}"));
    bar.set_prefix(format!("{} hosts", runs.len()));
    let f = FleetBar {
        bar,
        total: runs.len(),
        running: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
    };
    f.show();
    f
}

impl FleetBar {
    fn started(&self) {
        self.running.fetch_add(1, Ordering::Relaxed);
        self.show();
    }

    fn ended(&self, ok: bool) {
        self.running.fetch_sub(1, Ordering::Relaxed);
        let counter = if ok { &self.done } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        self.show();
    }

    fn show(&self) {
        self.bar.set_message(format!(
            "{}/{} done, {} failed, {} running",
            self.done.load(Ordering::Relaxed),
            self.total,
            self.failed.load(Ordering::Relaxed),
            self.running.load(Ordering::Relaxed)
        ));
    }
}

/// The release's tar through `channel`, counted on `bar` and stopped when interrupted; the bytes
/// sent and the channel back, to read tar's exit.
fn send(
    channel: crate::ssh::Stream,
    r: &Run,
    c: &Ctx,
    bar: &ProgressBar,
) -> std::io::Result<(u64, ssh2::Channel)> {
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
    let staged_script = layout::link_shared_script(
        r.deploy_to(),
        &c.release,
        &c.cfg.shared_dirs,
        &c.cfg.shared_file_specs(),
        &c.revision,
    );
    let release = upload::Release {
        source: &c.tree.dir,
        manifest: &c.tree.manifest,
        manifest_lines: &c.manifest_lines,
        name: &c.release,
        staged_script: &staged_script,
    };
    let mut w = upload::write_release(counting, &release, &r.delta, r.previous.as_deref())?;
    w.flush()?;
    let sent = w.written;
    let ch = w.into_inner().into_inner().map_err(|e| e.into_error())?;
    Ok((sent, ch.into_channel()))
}

/// Keeps a copy of the manifest the host now has for the new release, made here as the host
/// made it, so the next deploy's listing is its hash. A copy of the live one it was made from
/// is needed; without it nothing is kept, and the next deploy's listing is sent.
fn learn(r: &Run, c: &Ctx) {
    let live = upload::Live::of(&r.delta, r.previous.as_deref());
    match (live.and_then(|l| l.rebuild), &r.host.state.manifest_sum) {
        (Some(rebuild), Some(old)) => c.copies.learn_rebuilt(old, &rebuild.dropped, || {
            c.tree.manifest.lines_where(|i| !r.delta.linked[i])
        }),
        (Some(_), None) => {}
        (None, _) => c
            .copies
            .learn_whole(c.manifest_lines.get_or_init(|| c.tree.manifest.to_lines())),
    }
}

/// Uploads the release and finishes staging it on one host.
pub(super) fn stage(r: &mut Run, c: &Ctx, bar: &ProgressBar) {
    let Some(channel) = r.upload.take() else {
        return r.host.fail(Stage::Upload, fleet::StepError::NotConnected);
    };
    r.staged = true;
    let host = r.host.name().to_owned();
    let (sent, ch) = match send(channel, r, c, bar) {
        Ok(x) => x,
        Err(e) => {
            return r.host.fail(
                Stage::Upload,
                format_args!("connection lost while sending: {e}"),
            );
        }
    };
    r.sent_bytes = sent;
    // One step: tar's exit, then the shared links' (the script the stream carried).
    match crate::ssh::finish(&host, ch) {
        Ok(o) if o.status == 0 => learn(r, c),
        Ok(o) if o.status == upload::LINK_FAILED => r.host.fail(
            Stage::Upload,
            format_args!(
                "linking the unchanged files from release {} failed: {}",
                r.previous.as_deref().unwrap_or("?"),
                fleet::last_lines(&o.stderr, 4).unwrap_or_default()
            ),
        ),
        Ok(o) if o.status == upload::MANIFEST_FAILED => r.host.fail(
            Stage::Upload,
            format_args!(
                "the new manifest could not be put in place: {}",
                fleet::last_lines(&o.stderr, 4).unwrap_or_default()
            ),
        ),
        Ok(o) if o.status == upload::STAGED_FAILED => r.host.fail(
            Stage::SharedLinks,
            fleet::last_lines(&o.stderr, 4)
                .unwrap_or_else(|| "the staging script failed without a word".to_owned()),
        ),
        Ok(o) => r.host.fail(
            Stage::Upload,
            format_args!(
                "tar exited {}: {}",
                o.status,
                fleet::last_lines(&o.stderr, 4).unwrap_or_default()
            ),
        ),
        Err(e) => r.host.fail(Stage::Upload, e),
    }
}
