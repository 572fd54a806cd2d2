//! `[hooks]`: the commands run around a publish on each host, and on this machine around the
//! whole deploy; a remote hook is a line, or a table with `roles` and `once`, or a named task
//! (`[tasks.NAME]`, also run by hand with `deployer run NAME`).

use super::{Config, Problem, Target};
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    #[serde(default)]
    pub before_publish: Vec<Hook>,
    #[serde(default)]
    pub after_publish: Vec<Hook>,
    /// Run here once the build is done, every host locked but nothing staged; one failing
    /// stops the deploy.
    #[serde(default)]
    pub local_before: Vec<String>,
    /// Run here at the end of every deploy, whatever its outcome (a failed `local_before`
    /// too).
    #[serde(default)]
    pub local_after: Vec<String>,
    /// Run here when a deploy failed (a failed `local_before` too), before `local_after`.
    #[serde(default)]
    pub local_failed: Vec<String>,
}

/// A hook: a command line; or `{ command = "…", roles = ["db"], once = true }`, which runs
/// only on the hosts with one of `roles` (all when empty) and, with `once`, on the first of
/// those selected only (a database migration); or `{ task = "NAME" }`, the task `[tasks.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "HookSpec")]
pub struct Hook {
    pub command: String,
    pub once: bool,
    pub roles: Vec<String>,
    /// The task it names, until the file's tasks are read; then its command and hosts.
    pub task: Option<String>,
}

/// `[tasks.NAME]`: a command run by hand (`deployer run NAME`) or as a hook
/// (`{ task = "NAME" }`), on the hosts with one of `roles`, or the first of them with `once`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub command: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub once: bool,
    /// One line for `deployer tasks`.
    #[serde(default)]
    pub description: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum HookSpec {
    Line(String),
    Table(HookTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HookTable {
    command: Option<String>,
    task: Option<String>,
    #[serde(default)]
    once: bool,
    #[serde(default)]
    roles: Vec<String>,
}

impl TryFrom<HookSpec> for Hook {
    type Error = String;

    fn try_from(spec: HookSpec) -> Result<Self, String> {
        let t = match spec {
            HookSpec::Line(command) => return Ok(Hook::on_every_host(command)),
            HookSpec::Table(t) => t,
        };
        match (t.command, t.task) {
            (Some(command), None) => Ok(Hook {
                command,
                once: t.once,
                roles: t.roles,
                task: None,
            }),
            (None, Some(task)) if !t.once && t.roles.is_empty() => Ok(Hook {
                command: String::new(),
                once: false,
                roles: Vec::new(),
                task: Some(task),
            }),
            (None, Some(task)) => Err(format!(
                "{{ task = {task:?} }} takes its roles and once from [tasks.{task}]"
            )),
            _ => Err("a hook table has either command or task".to_owned()),
        }
    }
}

impl Hook {
    fn on_every_host(command: String) -> Self {
        Hook {
            command,
            once: false,
            roles: Vec::new(),
            task: None,
        }
    }

    /// The task's command and hosts in place of its name.
    pub(super) fn of_task(task: &Task, name: &str) -> Self {
        Hook {
            command: task.command.clone(),
            once: task.once,
            roles: task.roles.clone(),
            task: Some(name.to_owned()),
        }
    }

    /// Whether it runs on `host`, one of `selected` (in the config's order).
    pub fn runs_on(&self, host: &Target, selected: &[Target]) -> bool {
        runs_on(&self.roles, self.once, host, selected)
    }
}

impl Task {
    /// The hosts of `selected` it runs on.
    pub fn hosts<'t>(&self, selected: &'t [Target]) -> Vec<&'t Target> {
        selected
            .iter()
            .filter(|t| runs_on(&self.roles, self.once, t, selected))
            .collect()
    }
}

/// A host runs a command limited to `roles` (none: every host) when it has one of them; with
/// `once`, only the first such host selected does.
fn runs_on(roles: &[String], once: bool, host: &Target, selected: &[Target]) -> bool {
    let eligible = |t: &Target| roles.is_empty() || t.roles.iter().any(|r| roles.contains(r));
    eligible(host)
        && (!once
            || selected
                .iter()
                .find(|t| eligible(t))
                .is_some_and(|t| t.name == host.name))
}

/// The commands of `hooks` that `host` runs, `selected` being every host of the command.
pub fn hook_commands(hooks: &[Hook], host: &Target, selected: &[Target]) -> Vec<String> {
    hooks
        .iter()
        .filter(|h| h.runs_on(host, selected))
        .map(|h| h.command.clone())
        .collect()
}

/// Where a hook or task runs, as the plan and `deployer tasks` say it.
pub fn where_shown(roles: &[String], once: bool) -> String {
    match (roles.is_empty(), once) {
        (true, false) => String::new(),
        (true, true) => " (once, on the first host)".to_owned(),
        (false, false) => format!(" (roles {})", roles.join(", ")),
        (false, true) => format!(
            " (once, on the first host with role {})",
            roles.join(" or ")
        ),
    }
}

/// The hooks as the plan shows them: `a && b (once, on the first host)`.
pub fn hooks_shown(hooks: &[Hook]) -> String {
    hooks
        .iter()
        .map(|h| {
            let named = h
                .task
                .as_ref()
                .map_or(String::new(), |t| format!("task {t}: "));
            format!("{named}{}{}", h.command, where_shown(&h.roles, h.once))
        })
        .collect::<Vec<_>>()
        .join(" && ")
}

impl Config {
    /// Hooks that name a task take its command and hosts; every role a hook or task names is
    /// some host's (a misspelt role would run nowhere, silently).
    pub(super) fn name_tasks(&mut self) -> Result<(), Problem> {
        let listed = |names: Vec<&str>| {
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        };
        let tasks = self.tasks.clone();
        let roles: Vec<String> = self.hosts.iter().flat_map(|h| h.roles.clone()).collect();
        let known_roles =
            |what: String, named: &[String]| match named.iter().find(|r| !roles.contains(r)) {
                Some(r) => {
                    let mut all: Vec<&str> = roles.iter().map(String::as_str).collect();
                    all.sort();
                    all.dedup();
                    Err(Problem::UnknownRole(what, r.clone(), listed(all)))
                }
                None => Ok(()),
            };
        for (name, task) in &tasks {
            known_roles(format!("[tasks.{name}]"), &task.roles)?;
        }
        for (stage, hooks) in [
            ("before_publish", &mut self.hooks.before_publish),
            ("after_publish", &mut self.hooks.after_publish),
        ] {
            for hook in hooks.iter_mut() {
                if let Some(name) = hook.task.clone() {
                    let task = tasks.get(&name).ok_or_else(|| {
                        Problem::UnknownTask(
                            name.clone(),
                            listed(tasks.keys().map(String::as_str).collect()),
                        )
                    })?;
                    *hook = Hook::of_task(task, &name);
                }
                known_roles(format!("[hooks] {stage}"), &hook.roles)?;
            }
        }
        Ok(())
    }
}
