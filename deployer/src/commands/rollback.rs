//! `deployer rollback [--to RELEASE]`: every selected host back to its previous good release
//! (or to RELEASE), all or nothing: the target is checked on every host before any `current`
//! moves, and hosts that switched are put back if another cannot. Then the after_publish hooks
//! (restart) and the health gate, a `rollback` line in revisions.log, unlock.

use crate::config::{Config, Target};
use crate::fleet::{self, Failure, Host, Stage, each};
use crate::health::Gate;
use crate::layout;
use crate::lock;
use crate::outcome::{Outcome, Unfinished};
use crate::phases::{self, Release};
use crate::report::{HookRun, hooks_log};
use crate::settings::Settings;
use crate::table;
use std::fmt;

/// Per host: where it was, where it went, and any failure.
#[derive(Debug, Clone)]
pub struct Moved {
    pub name: String,
    pub from: Option<String>,
    pub to: Option<String>,
    /// What happened, or why it did not.
    pub result: Result<String, Failure>,
    /// Left for the user (a host that could not be switched back, a lock still held).
    pub warnings: Vec<String>,
}

/// What `rollback` did on every host.
pub struct Rollback {
    pub hosts: Vec<Moved>,
    /// The after_publish hooks that ran, with their output.
    pub hooks: Vec<HookRun>,
    /// Print the hooks' log after the table (`-v`).
    pub show_hooks: bool,
}

/// One host of the rollback.
struct Step {
    host: Host,
    to: Option<String>,
    revision: String,
    switched: bool,
    warnings: Vec<String>,
    hooks: Option<HookRun>,
}

impl Step {
    fn release(&self) -> Release<'_> {
        Release {
            name: self.to.as_deref().unwrap_or_default(),
            revision: &self.revision,
            previous: self.host.state.current.as_deref(),
        }
    }

    /// The release this host goes to and its revision, owned: the stages borrow the host.
    fn target(&self) -> (String, String) {
        (self.to.clone().unwrap_or_default(), self.revision.clone())
    }

    /// Chooses where this host goes: `to`, or the newest good release older than `current`.
    fn choose(&mut self, to: Option<&str>) {
        let state = &self.host.state;
        let target = match to {
            Some(t) => state.releases.iter().find(|r| r.name == t && r.complete),
            None => layout::previous_good(state),
        };
        match target {
            Some(t) if Some(t.name.as_str()) == state.current.as_deref() => {
                let why = format!("{} is already current", t.name);
                self.host.fail(Stage::Rollback, why);
            }
            Some(t) => {
                self.to = Some(t.name.clone());
                self.revision = t.revision.clone();
            }
            None => {
                let why = match to {
                    Some(t) => format!("no complete release {t} on this host"),
                    None => "no older good release to roll back to".into(),
                };
                self.host.fail(Stage::Rollback, why);
            }
        }
    }
}

pub fn rollback(
    cfg: &Config,
    targets: &[Target],
    settings: &Settings,
    to: Option<&str>,
    dry_run: bool,
) -> Rollback {
    let user = cfg.user();
    let owner = lock::owner_line(&user);
    let parallel = settings.parallel;
    let mut steps: Vec<Step> = fleet::connect(targets, &settings.ssh, parallel)
        .into_iter()
        .map(|host| Step {
            host,
            to: None,
            revision: String::new(),
            switched: false,
            warnings: Vec::new(),
            hooks: None,
        })
        .collect();
    each(&mut steps, parallel, |st| {
        if !st.host.ok() {
            return;
        }
        if dry_run {
            fleet::read_state(&mut st.host, None, &[]);
        } else {
            lock::acquire(&mut st.host, &owner, lock::Ask::default());
        }
        if st.host.ok() {
            st.choose(to);
        }
    });
    if steps.iter().all(|st| st.host.ok()) && !dry_run && switch_all(&mut steps, parallel) {
        restart_all(&mut steps, cfg, targets, settings);
    }
    each(&mut steps, parallel, |st| st.log_and_unlock(&user, &owner));
    let hooks = steps.iter_mut().filter_map(|st| st.hooks.take()).collect();
    Rollback {
        hosts: steps.into_iter().map(|st| moved(st, dry_run)).collect(),
        hooks,
        show_hooks: settings.verbose,
    }
}

impl Step {
    /// Writes the revisions log (when the host moved) and releases the lock; a failure to
    /// release is a warning, the rollback itself stands.
    fn log_and_unlock(&mut self, user: &str, owner: &str) {
        let log = if self.switched {
            let release = self.release();
            let mut entry = phases::log_entry(&release, user, "-", "rollback");
            entry.stage = self.host.failure.as_ref().map(|f| f.stage.name());
            entry.error = self.host.failure.as_ref().map(|f| f.message.as_str());
            entry.from = self.host.state.current.as_deref();
            layout::log_script(&self.host.target.deploy_to, &entry)
        } else {
            String::new()
        };
        if let Err(e) = lock::release(&mut self.host, owner, &log) {
            self.warnings.push(e.to_string());
        }
    }
}

/// Switches every host to its target, all or nothing: when one fails, those that moved are put
/// back. True when all moved.
fn switch_all(steps: &mut [Step], parallel: usize) -> bool {
    each(steps, parallel, |st| {
        let to = st.to.clone().unwrap_or_default();
        match phases::switch(&mut st.host, &to) {
            Ok(()) => st.switched = true,
            Err(e) => st.host.fail(Stage::Switch, e),
        }
    });
    if steps.iter().all(|st| st.host.ok()) {
        return true;
    }
    each(steps, parallel, |st| {
        if st.switched {
            let from = st.host.state.current.clone();
            match phases::restore(&mut st.host, from.as_deref(), "") {
                Ok(()) => st.switched = false,
                Err(e) => st.warnings.push(format!("could not switch back: {e}")),
            }
        }
    });
    false
}

/// Restarts every switched host on the release it went to (after_publish hooks), then checks
/// with the health gate that this release is what answers.
fn restart_all(steps: &mut [Step], cfg: &Config, targets: &[Target], settings: &Settings) {
    let parallel = settings.parallel;
    let after = &cfg.hooks.after_publish;
    each(steps, parallel, |st| {
        let (name, revision) = st.target();
        let release = Release::new(&name, &revision);
        let timeout = settings.hook_timeout;
        st.hooks = phases::restart(
            &mut st.host,
            Stage::AfterPublish,
            &release,
            after,
            targets,
            timeout,
        );
        if let Some(problem) = st.hooks.as_ref().and_then(|h| h.problem.clone()) {
            st.host.fail(Stage::AfterPublish, problem);
        }
    });
    if let Some(gate) = cfg.health.as_ref().and_then(Gate::new) {
        each(steps, parallel, |st| {
            let (name, revision) = st.target();
            if st.host.ok() {
                phases::health(&mut st.host, &gate, &Release::new(&name, &revision));
            }
        });
    }
}

fn moved(st: Step, dry_run: bool) -> Moved {
    let to = st.to.as_deref().unwrap_or("-");
    let result = match (st.host.failure, dry_run, st.switched) {
        (Some(f), _, _) => Err(f),
        (None, true, _) => Ok(format!("would switch current to {to}")),
        (None, false, true) => Ok(format!("current is now {to}")),
        (None, false, false) => Ok("unchanged (another host failed)".into()),
    };
    Moved {
        name: st.host.target.name,
        from: st.host.state.current,
        to: st.to,
        result,
        warnings: st.warnings,
    }
}

impl fmt::Display for Rollback {
    /// `HOST RESULT`, each result followed by where the host was.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = self.hosts.iter().map(|m| {
            let from = m.from.as_deref().unwrap_or("-");
            let result = m.result.as_ref().map(|t| format!("{t} (was {from})"));
            (m.name.as_str(), result)
        });
        f.write_str(&table::host_results(rows))?;
        let warned = self
            .hosts
            .iter()
            .map(|m| (m.name.as_str(), &m.warnings[..]));
        f.write_str(&table::warnings(warned))?;
        if self.show_hooks {
            f.write_str(&hooks_log(&self.hooks))?;
        }
        Ok(())
    }
}

impl Outcome for Rollback {
    fn verdict(&self) -> Result<(), Unfinished> {
        match self.hosts.iter().filter(|m| m.result.is_err()).count() {
            0 => Ok(()),
            n => Err(Unfinished::Rollback(n)),
        }
    }
}
