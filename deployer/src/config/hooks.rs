//! `[hooks]`: the commands run around a publish on each host, and on this machine around the
//! whole deploy; a remote hook is a line, or a table with `once`.

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

/// A hook: a command line, or `{ command = "…", once = true }` for one that runs on one host
/// only (the first selected), such as a database migration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "HookSpec")]
pub struct Hook {
    pub command: String,
    pub once: bool,
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
    command: String,
    #[serde(default)]
    once: bool,
}

impl From<HookSpec> for Hook {
    fn from(spec: HookSpec) -> Self {
        match spec {
            HookSpec::Line(command) => Hook {
                command,
                once: false,
            },
            HookSpec::Table(t) => Hook {
                command: t.command,
                once: t.once,
            },
        }
    }
}

/// The commands of `hooks` one host runs: every hook on the first selected host, the others
/// without the `once` ones.
pub fn hook_commands(hooks: &[Hook], first_host: bool) -> Vec<String> {
    hooks
        .iter()
        .filter(|h| first_host || !h.once)
        .map(|h| h.command.clone())
        .collect()
}

/// The hooks as the plan shows them: `a && b (once)`.
pub fn hooks_shown(hooks: &[Hook]) -> String {
    hooks
        .iter()
        .map(|h| {
            if h.once {
                format!("{} (once, on the first host)", h.command)
            } else {
                h.command.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" && ")
}
