//! `deployer exec -- CMD…`: one command on every selected host (one argument: a shell command
//! line; several: its words), in parallel, through the same
//! SSH session a deploy uses, run in the host's `current` release (or `deploy_to` before the
//! first deploy). Each line of output is printed prefixed with its host (or grouped under it
//! with `--group`); the command fails when it failed, or could not run, on any host.

use crate::config::Target;
use crate::host_output::{Executed, run_everywhere};
use crate::settings::Settings;
use crate::ssh::quote;

/// Runs `argv` on every host, at most `parallel` at a time, each within `--hook-timeout`: one
/// argument is a shell command line (`sh -c`, as `ssh host 'cmd'` runs it); several are the
/// words of one command, each quoted (exactly these words, no shell syntax around them).
pub fn exec(targets: &[Target], settings: &Settings, argv: &[String], group: bool) -> Executed {
    let command = match argv {
        [line] => format!("sh -c {}", quote(line)),
        words => words.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" "),
    };
    run_everywhere(targets, settings, group, |h| {
        let d = quote(&h.target.deploy_to);
        format!("cd {d}/current 2>/dev/null || cd {d} || exit 1\n{command}\n")
    })
}
