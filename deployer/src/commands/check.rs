//! `deployer check`: on every selected host, in parallel — connect and verify the host key,
//! authenticate, then one remote step reports whether the deploy directory is writable, which of
//! the tools a deploy runs there are missing, and reads the layout (the lock as `layout` reads it
//! for every command). Changes nothing.

use crate::config::{Config, Target};
use crate::fleet::{self, Host, each};
use crate::layout;
use crate::outcome::{Outcome, Unfinished};
use crate::settings::Settings;
use crate::ssh::quote;
use crate::table::table;
use std::fmt;

/// What `check` found on one host; `problem` is set when the host is not ready to deploy.
#[derive(Debug, Clone)]
pub struct HostReport {
    pub name: String,
    pub deploy_to: String,
    pub reachable: bool,
    pub dir_exists: bool,
    pub writable: bool,
    /// The directory a missing `deploy_to` would be made in: its nearest existing ancestor.
    pub nearest: Option<String>,
    /// `None` when not read; else the holder's line when the lock is held.
    pub lock: Option<Option<String>>,
    /// Shared files the config requires that `shared/` lacks.
    pub missing_shared: Vec<String>,
    /// What a deploy runs on the host that it lacks ([`TOOLS`]).
    pub missing_tools: Vec<String>,
    pub problem: Option<String>,
}

/// What a deploy runs on a host, each with a probe that fails without it: the upload's GNU tar,
/// the links' `cp --parents` and `xargs -0 -r -P`, the manifest's awk, publish's `mv -T`.
const TOOLS: [(&str, &str); 5] = [
    (
        "GNU tar",
        "tar --version 2>/dev/null | head -n 1 | grep -q 'GNU tar'",
    ),
    (
        "cp --parents (GNU coreutils)",
        "cp --help 2>&1 | grep -q -e --parents",
    ),
    (
        "xargs -0 -r -P (GNU findutils)",
        "printf '' | xargs -0 -r -P 2 false",
    ),
    ("awk", "command -v awk >/dev/null"),
    (
        "mv -T (GNU coreutils)",
        "mv --help 2>&1 | grep -q -e --no-target-directory",
    ),
];

/// One `missing_tool=NAME` line for each of [`TOOLS`] the host lacks.
fn tools_script() -> String {
    TOOLS
        .iter()
        .map(|(name, probe)| {
            format!(
                "{{ {probe}; }} || printf 'missing_tool=%s\\n' {}\n",
                quote(name)
            )
        })
        .collect()
}

/// Every selected host's report.
pub struct Checked {
    pub hosts: Vec<HostReport>,
}

/// Whether `deploy_to`, or its nearest existing parent, is writable: `writable=yes|no`.
fn writable_script(deploy_to: &str) -> String {
    format!(
        "d={}
if [ -d \"$d\" ]; then t=\"$d\"; else t=$(dirname \"$d\"); while [ ! -d \"$t\" ]; do t=$(dirname \"$t\"); done; fi
if [ -w \"$t\" ]; then echo writable=yes; else echo writable=no; fi
printf 'nearest=%s\\n' \"$t\"
",
        quote(deploy_to)
    )
}

fn check_host(h: &mut Host, required: &[String]) -> HostReport {
    let mut r = HostReport {
        name: h.target.name.clone(),
        deploy_to: h.target.deploy_to.clone(),
        reachable: h.ok(),
        dir_exists: false,
        writable: false,
        nearest: None,
        lock: None,
        missing_shared: Vec::new(),
        missing_tools: Vec::new(),
        problem: None,
    };
    if h.ok() {
        let d = &h.target.deploy_to;
        let script = format!(
            "{}{}{}",
            writable_script(d),
            tools_script(),
            layout::state_script(d, None, required)
        );
        match h.read_layout(&script, None) {
            Ok((_, reader)) => {
                r.writable = reader.other().iter().any(|l| l == "writable=yes");
                r.missing_tools = reader
                    .other()
                    .iter()
                    .filter_map(|l| l.strip_prefix("missing_tool="))
                    .filter(|t| TOOLS.iter().any(|(name, _)| name == t))
                    .map(str::to_owned)
                    .collect();
                // What a host says is data: shown escaped.
                r.nearest = reader.other().iter().find_map(|l| {
                    l.strip_prefix("nearest=")
                        .map(|n| crate::remote_text::printable(n).into_owned())
                });
                match reader.finish() {
                    Ok(state) => {
                        r.dir_exists = state.exists;
                        r.lock = Some(state.lock);
                        // A host without deploy_to has none of them yet.
                        r.missing_shared = if state.exists {
                            state.missing_shared
                        } else {
                            required.to_vec()
                        };
                    }
                    Err(e) => h.fail(fleet::Stage::State, e),
                }
            }
            Err(e) => h.fail(fleet::Stage::State, e),
        }
    }
    r.problem = problem(h, &r);
    r
}

/// What stops a deploy to this host, if anything.
fn problem(h: &Host, r: &HostReport) -> Option<String> {
    if let Some(f) = &h.failure {
        Some(f.message.clone())
    } else if !r.writable && !r.dir_exists {
        let nearest = r.nearest.as_deref().unwrap_or("its parent");
        Some(format!(
            "{} does not exist, and this user cannot create it in {nearest}: create it as root and give it to the deploy user (mkdir -p, then chown)",
            r.deploy_to
        ))
    } else if !r.missing_tools.is_empty() {
        Some(format!(
            "this host lacks what a deploy runs there: {} (install GNU coreutils, findutils, tar and awk)",
            r.missing_tools.join(", ")
        ))
    } else if !r.writable {
        Some(format!("{} is not writable by this user", r.deploy_to))
    } else if let Some(Some(by)) = &r.lock {
        Some(format!(
            "locked by another deploy: {by} (deployer unlock to clear a stale lock)"
        ))
    } else if !r.missing_shared.is_empty() {
        Some(format!(
            "shared file(s) {} missing in {}/shared: create them there, or let the release seed them (seed = true)",
            r.missing_shared.join(", "),
            r.deploy_to
        ))
    } else {
        None
    }
}

/// Checks all hosts, at most `parallel` at a time; reports in the targets' order. The shared
/// files `cfg` requires must be on every host whose `deploy_to` exists (a new host gets them
/// before its first deploy).
pub fn check(cfg: &Config, targets: &[Target], settings: &Settings) -> Checked {
    let required = cfg.required_shared();
    let mut hosts = fleet::connect(targets, &settings.ssh, settings.parallel);
    Checked {
        hosts: each(&mut hosts, settings.parallel, |h| check_host(h, &required)),
    }
}

impl fmt::Display for Checked {
    /// A table, one host a row.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let mut rows = vec![vec![
            "HOST".to_owned(),
            "SSH".into(),
            "DEPLOY_TO".into(),
            "EXISTS".into(),
            "WRITABLE".into(),
            "LOCK".into(),
            "STATUS".into(),
        ]];
        for r in &self.hosts {
            let read = r.lock.is_some();
            rows.push(vec![
                r.name.clone(),
                yes(r.reachable).into(),
                r.deploy_to.clone(),
                if read { yes(r.dir_exists) } else { "-" }.into(),
                if read { yes(r.writable) } else { "-" }.into(),
                match &r.lock {
                    None => "-".into(),
                    Some(None) => "free".into(),
                    Some(Some(_)) => "held".into(),
                },
                r.problem.clone().unwrap_or_else(|| "ok".into()),
            ]);
        }
        f.write_str(&table(&rows))
    }
}

impl Outcome for Checked {
    fn verdict(&self) -> Result<(), Unfinished> {
        match self.hosts.iter().filter(|r| r.problem.is_some()).count() {
            0 => Ok(()),
            bad => Err(Unfinished::NotReady {
                bad,
                of: self.hosts.len(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tools probe run by this machine's sh, with `fake` tools first on PATH.
    fn missing(fake: &[(&str, &str)]) -> Vec<String> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        for (name, body) in fake {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("fake");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(tools_script())
            .env("PATH", path)
            .output()
            .expect("sh");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .filter_map(|l| l.strip_prefix("missing_tool="))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_tools_a_deploy_runs_are_probed_on_the_host() {
        assert_eq!(
            missing(&[]),
            Vec::<String>::new(),
            "this machine has them all"
        );
        let busybox = [
            ("tar", "echo 'tar (busybox) 1.36.1'"),
            (
                "xargs",
                "case \"$*\" in *-P*) echo 'xargs: invalid option -- P' >&2; exit 1;; esac",
            ),
        ];
        assert_eq!(
            missing(&busybox),
            ["GNU tar", "xargs -0 -r -P (GNU findutils)"]
        );
    }
}
