//! `deploy --dry-run -v`: every remote command a deploy would send one host, in order, as it
//! would be sent (the tar stream summarized). Built by the same functions the deploy calls, so
//! what is shown is what runs.

use crate::config::{Config, Target, hook_commands};
use crate::fleet::Host;
use crate::layout;
use crate::lock;
use crate::manifest::Delta;
use crate::stages::{self, Release};
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
}

/// The remote steps of a deploy on `h`, each a heading line and its script indented.
pub(super) fn remote_commands(
    s: &Shown,
    h: &Host,
    delta: &Delta,
    previous: Option<&str>,
) -> String {
    let cfg = s.cfg;
    let d = &h.target.deploy_to;
    let user = cfg.user();
    let owner = lock::owner_line(&user);
    let release = Release {
        name: s.release,
        revision: s.revision,
        previous,
    };
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
    let remove = layout::cleanup_after_publish(&h.state.releases, s.release, cfg.keep_releases);
    let entry = stages::log_entry(&release, &user, s.branch, "deployed");
    let finish = format!(
        "{}\n{}\n{}",
        layout::remove_script(d, &remove),
        layout::log_script(d, &entry),
        lock::release_script(d, &owner)
    );
    let steps = [
        ("lock", Some(lock::acquire_script(d, &owner, false, &[]))),
        (
            "state",
            Some(layout::state_script(d, true, &cfg.required_shared())),
        ),
        (
            "upload",
            Some(format!(
                "{}\n# stdin: a tar of {} files sent, {} hard-linked from {}",
                upload::remote_command(d),
                delta.send,
                delta.link,
                previous.unwrap_or("nothing")
            )),
        ),
        (
            "shared links",
            Some(layout::link_shared_script(
                d,
                s.release,
                &cfg.shared_dirs,
                &cfg.shared_file_specs(),
                s.revision,
            )),
        ),
        ("before_publish", hooks(&cfg.hooks.before_publish)),
        ("publish", Some(layout::switch_script(d, s.release))),
        ("after_publish", hooks(&cfg.hooks.after_publish)),
        ("cleanup, log, unlock", Some(finish)),
    ];
    let mut out = format!("Remote commands on {}:\n", h.target.name);
    for (n, (step, script)) in steps.iter().filter(|(_, s)| s.is_some()).enumerate() {
        out.push_str(&format!("  # {}. {step}\n", n + 1));
        for line in script.iter().flat_map(|s| s.lines()) {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out
}
