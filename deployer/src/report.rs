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

#[derive(Debug, Clone, Default)]
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
    /// The connections and remote commands the run cost, printed with `-v`.
    pub ssh_usage: Option<crate::ssh::Usage>,
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
        if let Some(u) = self.ssh_usage.filter(|_| !self.hosts.is_empty()) {
            let per_host = u.commands as f64 / self.hosts.len() as f64;
            write!(
                f,
                "\n\nssh: {} connections and {} remote commands for {} hosts ({per_host:.1} per host)",
                u.connections,
                u.commands,
                self.hosts.len()
            )?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Stage;

    fn host(name: &str, failure: Option<Failure>) -> HostOutcome {
        HostOutcome {
            name: name.into(),
            host: format!("{name}.example"),
            previous: Some("20261130000000".into()),
            sent_files: 3,
            sent_bytes: 2048,
            linked_files: 7,
            result: if failure.is_some() {
                "rolled back to 20261130000000".into()
            } else {
                "published".into()
            },
            failure,
            warnings: Vec::new(),
        }
    }

    fn report(failed: bool) -> Report {
        let failure = failed.then(|| Failure {
            stage: Stage::Canary,
            message: "worse than the old release".into(),
        });
        Report {
            release: "20261201120000".into(),
            revision: "abc123".into(),
            hosts: vec![host("app1", failure), host("app2", None)],
            ok: !failed,
            elapsed: Duration::from_millis(1500),
            stopped: None,
            hooks: vec![HookRun {
                stage: "after_publish",
                host: Some("app1".into()),
                command: "./bin/restart".into(),
                problem: None,
                output: "restarted\n".into(),
            }],
            show_hooks: false,
            warnings: Vec::new(),
            // What Riemann said, with a terminal escape in a host name.
            canary: vec!["stopped: revision abc123 (app\u{1b}[2J1) against the others".into()],
            ssh_usage: None,
        }
    }

    #[test]
    fn a_failed_deploy_names_its_first_failed_host_and_stage() {
        let r = report(true);
        let shown = r.to_string();
        assert!(
            shown.contains(
                "rolled back to 20261130000000; FAILED at canary: worse than the old release"
            ),
            "{shown}"
        );
        assert!(shown.contains("3 files, 2.0 KiB"), "{shown}");
        match r.verdict() {
            Err(Unfinished::Deploy {
                release,
                host,
                failure,
            }) => {
                assert_eq!(
                    (release.as_str(), host.as_str()),
                    ("20261201120000", "app1")
                );
                assert_eq!(failure.map(|f| f.stage), Some(Stage::Canary));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_riemann_said_is_printed_escaped_and_hooks_only_with_v() {
        let mut r = report(true);
        let shown = r.to_string();
        assert!(
            shown.contains("canary: stopped: revision abc123 (app\\u{1b}[2J1)"),
            "{shown}"
        );
        assert!(!shown.contains('\u{1b}'), "{shown}");
        assert!(!shown.contains("HOOKS"), "{shown}");
        r.show_hooks = true;
        let shown = r.to_string();
        assert!(
            shown.contains("HOOKS\n== after_publish on app1: ./bin/restart (ok)\n   restarted"),
            "{shown}"
        );
    }

    #[test]
    fn warnings_make_a_live_release_unfinished_and_a_stop_says_why() {
        let mut r = report(false);
        assert!(r.verdict().is_ok());
        r.hosts[1].warnings.push("cleanup failed".into());
        assert!(
            matches!(r.verdict(), Err(Unfinished::LiveWithWarnings(release)) if release == "20261201120000")
        );
        let stopped = Report {
            release: String::new(),
            hosts: Vec::new(),
            ok: false,
            stopped: Some("local_before failed".into()),
            ..report(false)
        };
        assert!(
            matches!(stopped.verdict(), Err(Unfinished::Stopped(why)) if why == "local_before failed")
        );
    }
}
