//! `deploy --dry-run -v`: every remote command a deploy would send one host, in order, as it
//! would be sent (the tar stream summarized). Built by the same functions the deploy calls, so
//! what is shown is what runs.

use crate::config::{Config, Target, hook_commands};
use crate::delta::Delta;
use crate::fleet::Host;
use crate::layout;
use crate::lock;
use crate::phases::{self, Release};
use crate::upload;
use std::time::Duration;

/// What one host's commands depend on besides the config.
pub(super) struct Shown<'a> {
    pub cfg: &'a Config,
    pub selected: &'a [Target],
    pub release: &'a str,
    pub revision: &'a str,
    pub branch: &'a str,
    pub hook_timeout: Duration,
    /// The lock step reads the state (nothing runs between them).
    pub state_with_lock: bool,
    /// The sums of the live manifests the deployer holds copies of.
    pub sums: &'a [String],
}

/// The remote steps of a deploy on `h`, each a heading line and its script indented.
pub(super) fn remote_commands(
    s: &Shown,
    h: &Host,
    delta: &Delta,
    previous: Option<&str>,
) -> String {
    let mut out = format!("Remote commands on {}:\n", h.target.name);
    let steps = steps(s, h, delta, previous);
    for (n, (step, script)) in steps.iter().filter(|(_, s)| s.is_some()).enumerate() {
        out.push_str(&format!("  # {}. {step}\n", n + 1));
        for line in script.iter().flat_map(|s| s.lines()) {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out
}

/// Each step's script, in the deploy's order; `None` for a step with nothing to run here.
fn steps(
    s: &Shown,
    h: &Host,
    delta: &Delta,
    previous: Option<&str>,
) -> [(&'static str, Option<String>); 7] {
    let cfg = s.cfg;
    let d = &h.target.deploy_to;
    let owner = lock::owner_line(&cfg.user());
    let required = cfg.required_shared();
    let hooks = |hooks| {
        let commands = hook_commands(hooks, &h.target, s.selected);
        (!commands.is_empty()).then(|| {
            layout::hooks_script(
                d,
                s.release,
                previous,
                s.revision,
                &commands,
                s.hook_timeout,
            )
        })
    };
    let links = layout::link_shared_script(
        d,
        s.release,
        &cfg.shared_dirs,
        &cfg.shared_file_specs(),
        s.revision,
    );
    let live = upload::Live::of(delta, previous);
    let staging = upload::staging_script(s.release, live, &links);
    let upload = upload_shown(d, delta, previous, &staging);
    let sums = Some(s.sums);
    [
        match s.state_with_lock {
            false => (
                "lock",
                Some(lock::acquire_script(d, &owner, None, &[], true)),
            ),
            true => (
                "lock, state",
                Some(lock::acquire_script(d, &owner, sums, &required, true)),
            ),
        },
        (
            "state",
            (!s.state_with_lock).then(|| layout::state_script(d, sums, &required)),
        ),
        ("upload, shared links", Some(upload)),
        ("before_publish", hooks(&cfg.hooks.before_publish)),
        ("publish", Some(layout::switch_script(d, s.release))),
        ("after_publish", hooks(&cfg.hooks.after_publish)),
        ("cleanup, log, unlock", Some(finish(s, h, previous, &owner))),
    ]
}

/// The upload's command, and what its stream carries: the files, then the staging script.
fn upload_shown(d: &str, delta: &Delta, previous: Option<&str>, staging: &str) -> String {
    let carried: Vec<String> = staging.lines().map(|l| format!("#   {l}")).collect();
    let live = upload::Live::of(delta, previous);
    let linked = match (live, previous) {
        (Some(l), Some(p)) if l.names_on_host() => format!(
            "{} hard-linked from {p} by the names its manifest holds",
            delta.link
        ),
        (Some(l), Some(p)) if l.links => format!("{} hard-linked from {p} by name", delta.link),
        (_, Some(p)) if delta.link > 0 => format!("{} hard-linked from {p} by tar", delta.link),
        _ => "none linked".to_owned(),
    };
    let manifest = match live.and_then(|l| l.rebuild) {
        Some(r) => format!(
            "the manifest made from {}'s ({} of its lines dropped, {} sent)",
            previous.unwrap_or("?"),
            r.dropped.len(),
            delta.linked.iter().filter(|l| !**l).count()
        ),
        None => "the whole manifest".to_owned(),
    };
    format!(
        "{}\n# stdin: a tar of {} files sent, {linked}, {manifest}, and last its staging \
         script:\n{}",
        upload::remote_command(d),
        delta.send,
        carried.join("\n")
    )
}

/// The last step: old releases removed, the log line written, the lock released.
fn finish(s: &Shown, h: &Host, previous: Option<&str>, owner: &str) -> String {
    let d = &h.target.deploy_to;
    let user = s.cfg.user();
    let release = Release {
        name: s.release,
        revision: s.revision,
        previous,
    };
    let remove = layout::cleanup_after_publish(&h.state.releases, s.release, s.cfg.keep_releases);
    let entry = phases::log_entry(&release, &user, s.branch, "deployed");
    format!(
        "{}\n{}\n{}",
        layout::remove_script(d, &remove),
        layout::log_script(d, &entry),
        lock::release_script(d, owner)
    )
}
