//! `deployer tasks` lists `[tasks]`; `deployer run NAME` runs one by hand: on the selected hosts
//! it names (its roles; with `once`, the first of them), in each host's current release, with
//! the environment hooks get (`$RELEASE` and `$RELEASE_PATH` the current release's, `$REVISION`
//! its REVISION, `$DEPLOY_TO`; `$PREVIOUS_RELEASE` empty: no release is moving), output
//! prefixed by host, each host under the deploy lock (`--no-lock` for a task that only reads).
//! It fails when it fails on any host, naming them.

use crate::config::{Config, Target, where_shown};
use crate::host_output::{Executed, run_everywhere, run_everywhere_locked};
use crate::layout::task_script;
use crate::lock;
use crate::outcome::{Outcome, Unfinished};
use crate::settings::Settings;
use crate::table::table;
use std::fmt;

/// The tasks of the config, one row each.
pub struct TaskList {
    pub rows: Vec<Vec<String>>,
}

/// `deployer tasks`.
pub fn list_tasks(cfg: &Config) -> TaskList {
    let mut rows = vec![vec![
        "TASK".to_owned(),
        "RUNS ON".to_owned(),
        "COMMAND".to_owned(),
        "DESCRIPTION".to_owned(),
    ]];
    for (name, task) in &cfg.tasks {
        let on = where_shown(&task.roles, task.once);
        let on = on.trim().trim_start_matches('(').trim_end_matches(')');
        rows.push(vec![
            name.clone(),
            if on.is_empty() {
                "every host".to_owned()
            } else {
                on.to_owned()
            },
            task.command.clone(),
            task.description.clone(),
        ]);
    }
    TaskList { rows }
}

impl fmt::Display for TaskList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rows.len() == 1 {
            return write!(
                f,
                "no tasks: add [tasks.NAME] command = \"…\" (roles, once, description) to deploy.toml"
            );
        }
        write!(f, "{}", table(&self.rows))
    }
}

impl Outcome for TaskList {
    fn verdict(&self) -> Result<(), Unfinished> {
        Ok(())
    }
}

/// A task that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("no task {name:?}: the tasks are {known} (deployer tasks lists them)")]
    Unknown { name: String, known: String },
    #[error("task {name:?} runs on roles {roles}: no selected host has one")]
    NoHost { name: String, roles: String },
}

/// `deployer run NAME`: the task on the hosts of `targets` it names, within `--hook-timeout`,
/// each under the deploy lock unless `unlocked` (a task that only reads may run beside a
/// deploy; a migration must not).
pub fn run_task(
    cfg: &Config,
    targets: &[Target],
    settings: &Settings,
    name: &str,
    group: bool,
    unlocked: bool,
) -> Result<Executed, TaskError> {
    let task = cfg.tasks.get(name).ok_or_else(|| TaskError::Unknown {
        name: name.to_owned(),
        known: if cfg.tasks.is_empty() {
            "none".to_owned()
        } else {
            cfg.tasks.keys().cloned().collect::<Vec<_>>().join(", ")
        },
    })?;
    let hosts: Vec<Target> = task.hosts(targets).into_iter().cloned().collect();
    if hosts.is_empty() {
        return Err(TaskError::NoHost {
            name: name.to_owned(),
            roles: task.roles.join(", "),
        });
    }
    let script = |h: &crate::fleet::Host| {
        task_script(&h.target.deploy_to, &task.command, settings.hook_timeout)
    };
    Ok(match unlocked {
        true => run_everywhere(&hosts, settings, group, script),
        false => {
            let owner = lock::owner_line(&cfg.user());
            run_everywhere_locked(&hosts, settings, group, &owner, script)
        }
    })
}
