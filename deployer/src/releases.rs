//! `deployer releases` (what each host has) and `deployer cleanup` (remove bad and incomplete
//! releases and good ones beyond `keep_releases`, never `current`; under the lock).

use crate::config::{Config, Target};
use crate::deploy::Settings;
use crate::fleet::{self, Host, each};
use crate::layout;
use crate::lock;

/// Reads every host's layout (no lock: read only).
pub fn list(targets: &[Target], s: &Settings) -> Vec<Host> {
    read(targets, s, false)
}

/// Like [`list`], with the current release's manifest.
pub fn list_with_manifests(targets: &[Target], s: &Settings) -> Vec<Host> {
    read(targets, s, true)
}

fn read(targets: &[Target], s: &Settings, manifest: bool) -> Vec<Host> {
    let mut hosts = fleet::connect(targets, &s.ssh, s.parallel);
    each(&mut hosts, s.parallel, |h| {
        if h.failure.is_some() {
            return;
        }
        match h.run(&layout::state_script(&h.target.deploy_to, manifest), None) {
            Ok(o) => h.state = layout::parse_state(&o.stdout),
            Err(e) => h.fail("state", e),
        }
    });
    hosts
}

/// Per host: the releases removed (or that would be, with `dry_run`), or what went wrong.
pub fn cleanup(
    cfg: &Config,
    targets: &[Target],
    s: &Settings,
    dry_run: bool,
) -> Vec<(String, Result<Vec<String>, String>)> {
    if dry_run {
        return list(targets, s)
            .into_iter()
            .map(|h| {
                let r = match &h.failure {
                    Some(f) => Err(format!("{}: {}", f.stage, f.message)),
                    None => Ok(layout::cleanup_plan(
                        &h.state.releases,
                        h.state.current.as_deref(),
                        cfg.keep_releases,
                    )),
                };
                (h.target.name, r)
            })
            .collect();
    }
    let owner = lock::owner_line(&cfg.user());
    let mut hosts = fleet::connect(targets, &s.ssh, s.parallel);
    each(&mut hosts, s.parallel, |h| {
        if h.failure.is_some() {
            return Err(String::new());
        }
        lock::acquire(h, &owner, false);
        if h.failure.is_some() {
            return Err(String::new());
        }
        let remove = layout::cleanup_plan(
            &h.state.releases,
            h.state.current.as_deref(),
            cfg.keep_releases,
        );
        let script = layout::remove_script(&h.target.deploy_to, &remove);
        match lock::release(h, &owner, &script) {
            Ok(()) => Ok(remove),
            Err(e) => Err(e),
        }
    })
    .into_iter()
    .zip(hosts)
    .map(|(r, h)| {
        let r = match (&h.failure, r) {
            (Some(f), _) => Err(format!("{}: {}", f.stage, f.message)),
            (None, r) => r,
        };
        (h.target.name, r)
    })
    .collect()
}
