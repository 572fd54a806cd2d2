//! `deployer exec -- CMD…`: one command on every selected host, in parallel, through the same
//! SSH session a deploy uses, run in the host's `current` release (or `deploy_to` before the
//! first deploy). Each line of output is printed prefixed with its host (or grouped under it
//! with `--group`); the command fails when it failed, or could not run, on any host.

use crate::config::Target;
use crate::fleet::{self, Host, each};
use crate::outcome::{Outcome, Unfinished};
use crate::remote_text::printable;
use crate::settings::Settings;
use crate::ssh::quote;
use std::fmt;

/// What the command did on one host.
#[derive(Debug, Clone)]
pub struct HostRun {
    pub name: String,
    /// Its exit status; `None` when it could not run (the host unreachable).
    pub status: Option<i32>,
    /// stdout and stderr together (the last 64 KiB).
    pub output: String,
    /// Why it could not run.
    pub problem: Option<String>,
}

/// Every selected host's run, in the targets' order.
pub struct Executed {
    pub hosts: Vec<HostRun>,
    /// Print each host's output under a heading instead of prefixing every line.
    pub group: bool,
}

fn run_on(h: &mut Host, command: &str, settings: &Settings) -> HostRun {
    let mut run = HostRun {
        name: h.target.name.clone(),
        status: None,
        output: String::new(),
        problem: None,
    };
    let d = quote(&h.target.deploy_to);
    let script = format!("cd {d}/current 2>/dev/null || cd {d} || exit 1\n{command}\n");
    match h.shell.as_mut() {
        None => {
            run.problem = Some(
                h.failure
                    .as_ref()
                    .map_or_else(|| "not connected".to_owned(), |f| f.message.clone()),
            )
        }
        Some(shell) => match shell.run(&script, Some(settings.hook_timeout)) {
            Ok(o) => {
                run.status = Some(o.status);
                run.output = o.stdout;
            }
            Err(e) => run.problem = Some(e.to_string()),
        },
    }
    run
}

/// Runs `argv` (each word quoted: exactly these words, no shell syntax of ours around them)
/// on every host, at most `parallel` at a time, each within `--hook-timeout`.
pub fn exec(targets: &[Target], settings: &Settings, argv: &[String], group: bool) -> Executed {
    let command = argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ");
    let mut hosts = fleet::connect(targets, &settings.ssh, settings.parallel);
    Executed {
        hosts: each(&mut hosts, settings.parallel, |h| {
            run_on(h, &command, settings)
        }),
        group,
    }
}

impl fmt::Display for Executed {
    /// `host: line` for each line (a host's output is data: control characters escaped).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.hosts {
            let status = match (&r.problem, r.status) {
                (Some(p), _) => format!("could not run: {}", printable(p)),
                (None, Some(0)) => "exit 0".into(),
                (None, Some(s)) => format!("exit {s}"),
                (None, None) => "no status".into(),
            };
            if self.group {
                writeln!(f, "== {} ({status})", r.name)?;
                for line in r.output.lines() {
                    writeln!(f, "{}", printable(line))?;
                }
            } else {
                for line in r.output.lines() {
                    writeln!(f, "{}: {}", r.name, printable(line))?;
                }
                if r.status != Some(0) {
                    writeln!(f, "{}: {status}", r.name)?;
                }
            }
        }
        Ok(())
    }
}

impl Outcome for Executed {
    fn verdict(&self) -> Result<(), Unfinished> {
        let failed: Vec<&str> = self
            .hosts
            .iter()
            .filter(|r| r.status != Some(0))
            .map(|r| r.name.as_str())
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(Unfinished::Exec(failed.join(", ")))
        }
    }
}
