//! `deployer exec -- CMD…`: one command on every selected host, in parallel, through the same
//! SSH session a deploy uses, run in the host's `current` release (or `deploy_to` before the
//! first deploy). Each line of output is printed prefixed with its host (or grouped under it
//! with `--group`); the command fails when it failed, or could not run, on any host.

use crate::config::Target;
use crate::host_output::{Executed, run_everywhere};
use crate::settings::Settings;
use crate::ssh::quote;

/// Runs `argv` (each word quoted: exactly these words, no shell syntax of ours around them)
/// on every host, at most `parallel` at a time, each within `--hook-timeout`.
pub fn exec(targets: &[Target], settings: &Settings, argv: &[String], group: bool) -> Executed {
    let command = argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ");
    run_everywhere(targets, settings, group, |h| {
        let d = quote(&h.target.deploy_to);
        format!("cd {d}/current 2>/dev/null || cd {d} || exit 1\n{command}\n")
    })
}
