//! Local hooks: `[hooks] local_before`, `local_after` and `local_failed`, run on the deploy
//! machine with `sh -c` in the config file's directory, each within `--hook-timeout` (killed
//! with what it started past it, by the same runner the health gate's plugins use). They see
//! `DEPLOY_APPLICATION`, `DEPLOY_STAGE` (`-s`, empty without), `DEPLOY_RELEASE`,
//! `DEPLOY_REVISION`, `DEPLOY_HOSTS` (the selected hosts, comma-separated) and
//! `DEPLOY_OUTCOME` (`ok` or `failed`; empty before the deploy).
//! In `local_before`, `DEPLOY_RELEASE` is the name the clock gives: a host already holding a
//! later release (another deploy that went first) moves it on, and the hooks after the deploy
//! see the final one.

use crate::config::{Config, Target};
use crate::report::{HookRun, Report};
use crate::settings::Settings;
use plugin_api::Keep;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The local hooks of one deploy, and what they are all told.
pub(super) struct Local<'a> {
    cfg: &'a Config,
    settings: &'a Settings,
    hosts: String,
    revision: String,
}

impl<'a> Local<'a> {
    pub(super) fn new(
        cfg: &'a Config,
        settings: &'a Settings,
        targets: &[Target],
        revision: &str,
    ) -> Self {
        let hosts = targets
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(",");
        Self {
            cfg,
            settings,
            hosts,
            revision: revision.to_owned(),
        }
    }

    fn stage(
        &self,
        stage: &'static str,
        commands: &[String],
        release: &str,
        outcome: &str,
        abort: &AtomicBool,
    ) -> Vec<HookRun> {
        if !commands.is_empty() {
            self.settings.say(&format!("running {stage} hooks here"));
        }
        let env = Env {
            application: &self.cfg.application,
            stage: self.cfg.stage.as_deref().unwrap_or(""),
            release,
            revision: &self.revision,
            hosts: &self.hosts,
            outcome,
        };
        let timeout = self.settings.hook_timeout;
        run(stage, commands, &self.cfg.base, &env, timeout, abort)
    }

    /// `local_before` (a Ctrl-C stops it): what ran, and why the deploy stops when one failed.
    pub(super) fn before(&self, release: &str) -> (Vec<HookRun>, Option<String>) {
        let hooks = &self.cfg.hooks.local_before;
        let ran = self.stage(
            "local_before",
            hooks,
            release,
            "",
            &self.settings.interrupted,
        );
        let why = ran.last().and_then(|h| {
            let problem = h.problem.as_ref()?;
            let said = crate::fleet::last_lines(&h.output, 4)
                .map(|l| format!(": {l}"))
                .unwrap_or_default();
            Some(format!(
                "the local_before hook {:?} {problem}{said}",
                h.command
            ))
        });
        (ran, why)
    }

    /// `local_failed` when the deploy failed, then `local_after`, into the report's log; their
    /// failures are the report's warnings (the deploy stands). A Ctrl-C does not stop them:
    /// they tell of the deploy it ended (a second one exits at once).
    pub(super) fn after(&self, report: &mut Report) {
        let never = AtomicBool::new(false);
        let outcome = if report.ok { "ok" } else { "failed" };
        let mut ran = Vec::new();
        if !report.ok {
            let hooks = &self.cfg.hooks.local_failed;
            ran.extend(self.stage("local_failed", hooks, &report.release, outcome, &never));
        }
        let hooks = &self.cfg.hooks.local_after;
        ran.extend(self.stage("local_after", hooks, &report.release, outcome, &never));
        for h in &ran {
            if let Some(problem) = &h.problem {
                report
                    .warnings
                    .push(format!("the {} hook {:?} {problem}", h.stage, h.command));
            }
        }
        report.hooks.extend(ran);
    }
}

/// What every local hook of one deploy is told.
pub(super) struct Env<'a> {
    pub application: &'a str,
    /// `-s STAGE`, empty without one.
    pub stage: &'a str,
    pub release: &'a str,
    pub revision: &'a str,
    pub hosts: &'a str,
    pub outcome: &'a str,
}

/// Runs `commands` one after the other in `dir`; the first that fails stops them. Every one
/// that ran is in the returned list, its output (stdout and stderr together) with it.
pub(super) fn run(
    stage: &'static str,
    commands: &[String],
    dir: &Path,
    env: &Env,
    timeout: Duration,
    abort: &AtomicBool,
) -> Vec<HookRun> {
    let mut runs = Vec::new();
    for command in commands {
        let mut cmd = Command::new("sh");
        // stderr joins stdout, in the order written, for the whole hook and what it starts.
        cmd.arg("-c")
            .arg(format!("exec 2>&1\n{command}"))
            .current_dir(dir)
            .env("DEPLOY_APPLICATION", env.application)
            .env("DEPLOY_STAGE", env.stage)
            .env("DEPLOY_RELEASE", env.release)
            .env("DEPLOY_REVISION", env.revision)
            .env("DEPLOY_HOSTS", env.hosts)
            .env("DEPLOY_OUTCOME", env.outcome);
        // The hook runs in a process group of its own (a timeout kills what it started): a
        // Ctrl-C reaches the deployer only, which kills the hook through `abort`.
        let (status, output) = match plugin_api::run_with(cmd, timeout, Keep::Tail, Some(abort)) {
            Ok(r) if r.code.is_none() && !r.timed_out && abort.load(Ordering::Relaxed) => {
                (Err("interrupted by a signal".into()), r.output)
            }
            Ok(r) if r.timed_out => (
                Err(format!(
                    "timed out after {} (killed)",
                    humantime::format_duration(timeout)
                )),
                r.output,
            ),
            Ok(r) => match r.code {
                Some(0) => (Ok(()), r.output),
                Some(code) => (Err(format!("exited {code}")), r.output),
                None => (Err("killed by a signal".into()), r.output),
            },
            Err(e) => (Err(e.to_string()), String::new()),
        };
        let failed = status.is_err();
        runs.push(HookRun {
            stage,
            host: None,
            command: command.clone(),
            problem: status.err(),
            output,
        });
        if failed {
            break;
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_see_the_deploy_and_stop_at_the_first_failure() {
        let dir = tempfile::tempdir().expect("dir");
        let env = Env {
            application: "usersvc",
            stage: "production",
            release: "20261201100000",
            revision: "abc123",
            hosts: "app1,app2",
            outcome: "ok",
        };
        let commands = [
            "echo \"$DEPLOY_STAGE $DEPLOY_RELEASE $DEPLOY_REVISION $DEPLOY_HOSTS $DEPLOY_OUTCOME\"; pwd".into(),
            "echo to stderr >&2; exit 3".into(),
            "echo never".into(),
        ];
        let runs = run(
            "local_after",
            &commands,
            dir.path(),
            &env,
            Duration::from_secs(10),
            &AtomicBool::new(false),
        );
        assert_eq!(runs.len(), 2, "the third never ran: {runs:?}");
        assert!(
            runs[0]
                .output
                .starts_with("production 20261201100000 abc123 app1,app2 ok\n"),
            "{runs:?}"
        );
        assert!(runs[0].output.contains(&*dir.path().to_string_lossy()));
        assert!(runs[0].problem.is_none());
        assert_eq!(runs[1].output, "to stderr\n");
        assert_eq!(runs[1].problem.as_deref(), Some("exited 3"));
        let slow = run(
            "local_before",
            &["sleep 30".into()],
            dir.path(),
            &env,
            Duration::from_millis(200),
            &AtomicBool::new(false),
        );
        assert!(
            slow[0]
                .problem
                .as_deref()
                .is_some_and(|p| p.starts_with("timed out")),
            "{slow:?}"
        );
    }
}
