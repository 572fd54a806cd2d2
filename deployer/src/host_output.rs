//! What a command run on every host prints: each line prefixed with its host (or grouped
//! under it), a host's output escaped as the data it is, and a verdict naming the hosts where
//! it failed. Shared by `exec` and `logs`.

use crate::config::Target;
use crate::fleet::{self, Host, each};
use crate::lock;
use crate::outcome::{Outcome, Unfinished};
use crate::remote_text::printable;
use crate::settings::Settings;
use std::fmt;

/// What a command did on one host.
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

fn run_on(h: &mut Host, script: &str, settings: &Settings) -> HostRun {
    let mut run = HostRun {
        name: h.target.name.clone(),
        status: None,
        output: String::new(),
        problem: None,
    };
    match h.shell.as_mut().filter(|_| h.failure.is_none()) {
        None => {
            run.problem = Some(
                h.failure
                    .as_ref()
                    .map_or_else(|| "not connected".to_owned(), |f| f.message.clone()),
            )
        }
        Some(shell) => match shell.run(script, Some(settings.hook_timeout)) {
            Ok(o) => {
                run.status = Some(o.status);
                run.output = o.stdout;
            }
            Err(e) => run.problem = Some(e.to_string()),
        },
    }
    run
}

/// Runs the script `script_for` writes for each host on every host, at most `parallel` at a
/// time, each within `--hook-timeout`.
pub fn run_everywhere(
    targets: &[Target],
    settings: &Settings,
    group: bool,
    script_for: impl Fn(&Host) -> String + Sync,
) -> Executed {
    let mut hosts = fleet::connect(targets, &settings.ssh, settings.parallel);
    Executed {
        hosts: each(&mut hosts, settings.parallel, |h| {
            let script = script_for(h);
            run_on(h, &script, settings)
        }),
        group,
    }
}

/// As [`run_everywhere`], each host under the deploy lock of `owner`, taken before its script
/// and released after it: a host another deploy holds is not run on, and says who holds it.
/// A lock that cannot be released fails the host (`deployer unlock` clears it).
pub fn run_everywhere_locked(
    targets: &[Target],
    settings: &Settings,
    group: bool,
    owner: &str,
    script_for: impl Fn(&Host) -> String + Sync,
) -> Executed {
    let mut hosts = fleet::connect(targets, &settings.ssh, settings.parallel);
    Executed {
        hosts: each(&mut hosts, settings.parallel, |h| {
            if h.ok() {
                lock::acquire(h, owner, lock::Ask::default());
            }
            let mut run = match h.ok() {
                true => run_on(h, &script_for(h), settings),
                false => run_on(h, "", settings),
            };
            if let Err(e) = lock::release(h, owner, "") {
                let before = match (&run.problem, run.status) {
                    (Some(p), _) => format!("{p}; and "),
                    (None, Some(s)) => format!("ran (exit {s}), but "),
                    (None, None) => String::new(),
                };
                run.problem = Some(format!("{before}{e}"));
                run.status = None;
            }
            run
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
