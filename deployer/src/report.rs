//! What a deploy did, per host: the data `deploy` returns, the summary table it prints, and the
//! Riemann events ([`crate::events`]) are made from it.

use crate::fleet::Failure;
use crate::outcome::{Outcome, Unfinished};
use crate::remote_text::printable;
use crate::table::{bytes, table, warnings};
use std::fmt;
use std::time::Duration;

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

/// One hook's run (`[hooks]`, remote or local): where, what, and what it printed.
#[derive(Debug, Clone)]
pub struct HookRun {
    /// `local_before`, `before_publish`, …
    pub stage: &'static str,
    /// The host it ran on; `None`: this machine (a local hook).
    pub host: Option<String>,
    /// The command, or a stage's commands joined with `; ` (they run as one step on a host).
    pub command: String,
    /// Why it failed; `None`: it exited 0.
    pub problem: Option<String>,
    /// stdout and stderr together (the last 64 KiB on a host, the last 1 MiB here).
    pub output: String,
}

/// The hooks' log as `-v` prints it after a command's table: nothing when no hook ran.
pub fn hooks_log(hooks: &[HookRun]) -> String {
    if hooks.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n\nHOOKS");
    for h in hooks {
        out.push('\n');
        out.push_str(h.to_string().trim_end());
    }
    out
}

#[derive(Debug, Clone)]
pub struct Report {
    /// Empty when the run stopped before naming a release.
    pub release: String,
    pub revision: String,
    pub hosts: Vec<HostOutcome>,
    pub ok: bool,
    pub elapsed: Duration,
    /// Why the run stopped when no host's failure says it (a `local_before` hook failed).
    pub stopped: Option<String>,
    /// Every hook that ran, in order, with its output: the report's log.
    pub hooks: Vec<HookRun>,
    /// Print the hooks' log after the table (`-v`).
    pub show_hooks: bool,
    /// Warnings of the run itself, not of a host (a local hook after the deploy failed).
    pub warnings: Vec<String>,
    /// What the canary compared, and why the deploy went on or stopped.
    pub canary: Vec<String>,
}

impl fmt::Display for HookRun {
    /// `== before_publish on app1: cmd (exit 0)`, then each line of output, escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.problem.as_deref().unwrap_or("ok");
        writeln!(
            f,
            "== {} on {}: {} ({})",
            self.stage,
            self.host.as_deref().unwrap_or("this machine"),
            printable(&self.command),
            printable(status)
        )?;
        for line in self.output.lines() {
            writeln!(f, "   {}", printable(line))?;
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    /// One row per host, then the warnings.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rows = vec![vec![
            "HOST".to_owned(),
            "RELEASE".into(),
            "SENT".into(),
            "LINKED".into(),
            "RESULT".into(),
        ]];
        for h in &self.hosts {
            let result = match &h.failure {
                Some(failure) => format!("{}; FAILED {failure}", h.result),
                None => h.result.clone(),
            };
            rows.push(vec![
                h.name.clone(),
                if self.release.is_empty() {
                    "-".into()
                } else {
                    self.release.clone()
                },
                format!("{} files, {}", h.sent_files, bytes(h.sent_bytes)),
                format!("{} files", h.linked_files),
                result,
            ]);
        }
        f.write_str(&table(&rows))?;
        for line in &self.canary {
            // Host names and figures come from Riemann: data, escaped.
            write!(f, "\ncanary: {}", printable(line))?;
        }
        let warned = std::iter::once(("deploy", &self.warnings[..])).chain(
            self.hosts
                .iter()
                .map(|h| (h.name.as_str(), &h.warnings[..])),
        );
        f.write_str(&warnings(warned))?;
        if self.show_hooks {
            f.write_str(&hooks_log(&self.hooks))?;
        }
        Ok(())
    }
}

impl Outcome for Report {
    fn verdict(&self) -> Result<(), Unfinished> {
        if !self.ok {
            let first = self
                .hosts
                .iter()
                .find_map(|h| h.failure.clone().map(|f| (h.name.clone(), f)));
            let (host, failure) = match (first, &self.stopped) {
                (Some((host, f)), _) => (host, Some(f)),
                (None, Some(why)) => return Err(Unfinished::Stopped(why.clone())),
                (None, None) => ("a host".into(), None),
            };
            return Err(Unfinished::Deploy {
                release: if self.release.is_empty() {
                    "(no release staged)".into()
                } else {
                    self.release.clone()
                },
                host,
                failure,
            });
        }
        if !self.warnings.is_empty() || self.hosts.iter().any(|h| !h.warnings.is_empty()) {
            return Err(Unfinished::LiveWithWarnings(self.release.clone()));
        }
        Ok(())
    }
}
