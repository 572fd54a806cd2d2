//! `deployer releases` (what each host has) and `deployer cleanup` (remove bad and incomplete
//! releases and good ones beyond `keep_releases`, never `current`; under the lock).

use crate::config::{Config, Target};
use crate::fleet::{self, Failure, each};
use crate::layout::{self, HostState};
use crate::lock;
use crate::outcome::{Outcome, Unfinished};
use crate::settings::Settings;
use crate::table::{host_results, table};
use std::fmt;

/// Every selected host's releases, or why it could not be read: data only, the connections
/// are closed once read.
#[derive(Debug, Clone)]
pub struct Listing {
    /// In the order the hosts were selected.
    pub hosts: Vec<HostReleases>,
}

/// One host's releases as read.
#[derive(Debug, Clone)]
pub struct HostReleases {
    /// The host's name in deploy.toml.
    pub name: String,
    /// Its `deploy_to` directory.
    pub deploy_to: String,
    /// Its layout, or why it could not be read.
    pub layout: Result<HostState, Failure>,
}

/// Reads every host's layout (no lock: read only).
pub fn list(targets: &[Target], settings: &Settings) -> Listing {
    let hosts = fleet::read(targets, settings, None, &[])
        .into_iter()
        .map(|h| {
            let (target, layout) = h.into_layout();
            HostReleases {
                name: target.name,
                deploy_to: target.deploy_to,
                layout,
            }
        })
        .collect();
    Listing { hosts }
}

impl fmt::Display for Listing {
    /// A table per host, the current release and bad ones marked.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, h) in self.hosts.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            writeln!(f, "{} ({})", h.name, h.deploy_to)?;
            match &h.layout {
                Err(failure) => writeln!(f, "  FAILED {failure}")?,
                Ok(state) => f.write_str(&host_table(state))?,
            }
        }
        Ok(())
    }
}

impl Outcome for Listing {
    fn verdict(&self) -> Result<(), Unfinished> {
        match self.hosts.iter().filter(|h| h.layout.is_err()).count() {
            0 => Ok(()),
            n => Err(Unfinished::Unreadable(n)),
        }
    }
}

/// One host's releases, indented, newest last.
fn host_table(st: &HostState) -> String {
    if !st.exists || (st.releases.is_empty() && !st.dangling) {
        return "  no releases\n".into();
    }
    let mut rows = vec![vec![
        String::new(),
        "RELEASE".into(),
        "REVISION".into(),
        "STATUS".into(),
    ]];
    for r in &st.releases {
        let current = st.current.as_deref() == Some(r.name.as_str());
        let mut status = Vec::new();
        if current {
            status.push("current".to_owned());
        }
        if let Some(why) = &r.bad {
            status.push(format!("bad ({why})"));
        }
        if !r.complete {
            status.push("incomplete".into());
        }
        rows.push(vec![
            if current { "*".into() } else { " ".into() },
            r.name.clone(),
            if r.revision.is_empty() {
                "-".into()
            } else {
                r.revision.clone()
            },
            status.join(", "),
        ]);
    }
    let mut out = String::new();
    for line in table(&rows).lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    if let (true, Some(c)) = (st.dangling, &st.current) {
        out.push_str(&format!(
            "  WARNING: current points to releases/{c}, which is not there: the host serves nothing from it (deployer rollback --to RELEASE puts it right)\n"
        ));
    }
    if let Some(l) = &st.lock {
        out.push_str(&format!("  locked by {l}\n"));
    }
    out
}

/// Per host: the releases removed (or that would be, with `dry_run`), or what went wrong.
pub struct Cleanup {
    pub dry_run: bool,
    pub hosts: Vec<(String, Result<Vec<String>, Failure>)>,
}

pub fn cleanup(cfg: &Config, targets: &[Target], settings: &Settings, dry_run: bool) -> Cleanup {
    let keep = cfg.keep_releases;
    let plan = |st: &HostState| layout::cleanup_plan(&st.releases, st.current.as_deref(), keep);
    let hosts = if dry_run {
        fleet::read(targets, settings, None, &[])
            .into_iter()
            .map(|h| {
                let (target, layout) = h.into_layout();
                (target.name, layout.map(|state| plan(&state)))
            })
            .collect()
    } else {
        let owner = lock::owner_line(&cfg.user());
        let mut hosts = fleet::connect(targets, &settings.ssh, settings.parallel);
        let removed = each(&mut hosts, settings.parallel, |h| {
            lock::acquire(h, &owner, lock::Ask::default());
            if !h.ok() {
                return Vec::new();
            }
            let remove = plan(&h.state);
            let script = layout::remove_script(&h.target.deploy_to, &remove);
            if let Err(e) = lock::release(h, &owner, &script) {
                h.fail(fleet::Stage::Unlock, e);
            }
            remove
        });
        hosts
            .into_iter()
            .zip(removed)
            .map(|(h, removed)| {
                let (target, layout) = h.into_layout();
                (target.name, layout.map(|_| removed))
            })
            .collect()
    };
    Cleanup { dry_run, hosts }
}

impl fmt::Display for Cleanup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        let rows = self.hosts.iter().map(|(name, r)| {
            let text = r.as_ref().map(|removed| {
                if removed.is_empty() {
                    "nothing to remove".to_owned()
                } else {
                    format!("{verb} {}", removed.join(" "))
                }
            });
            (name.as_str(), text)
        });
        f.write_str(&host_results(rows))
    }
}

impl Outcome for Cleanup {
    fn verdict(&self) -> Result<(), Unfinished> {
        match self.hosts.iter().filter(|(_, r)| r.is_err()).count() {
            0 => Ok(()),
            n => Err(Unfinished::Cleanup(n)),
        }
    }
}
