//! The deploy's first step: every host connected to and locked before anything else, and, when
//! nothing is built, the tree read while the connections are made.

use super::{DeployError, Options, Run, staging, tree};
use crate::config::{Config, Target};
use crate::fleet::{self, each};
use crate::layout::LiveListing;
use crate::live_manifests::LiveManifests;
use crate::lock;
use crate::settings::Settings;
use crate::source::Tree;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

/// Every host locked, and the tree when it could be read first (see [`state_with_lock`]).
/// Otherwise every host is locked before the build: a held lock fails (or is waited for) at
/// once, not after a build of many minutes.
pub(super) fn lock_first(
    cfg: &Config,
    targets: &[Target],
    settings: &Settings,
    options: &Options,
    owner: &str,
    copies: &LiveManifests,
) -> Result<(Vec<Run>, Option<Tree>), DeployError> {
    let early = state_with_lock(cfg, options);
    settings.say(&format!("connecting to {} host(s)", targets.len()));
    // The hosts are connected to while the tree is read, when it is read first: of 20,000
    // files, the read takes longer than a connection. They are kept alive until it ends (as
    // through a build: a long read must not lose them to a NAT's idle timer). A refused tree (a
    // dirty work tree) is said at once: `read` dropped, the thread ends and drops them.
    let (read, reading) = std::sync::mpsc::channel::<()>();
    let connecting = {
        let (targets, ssh, parallel) = (targets.to_vec(), settings.ssh.clone(), settings.parallel);
        std::thread::spawn(move || {
            let hosts = fleet::connect(&targets, &ssh, parallel);
            let tick = Duration::from_secs(1);
            while let Err(RecvTimeoutError::Timeout) = reading.recv_timeout(tick) {
                hosts.iter().for_each(fleet::Host::keepalive);
            }
            hosts
        })
    };
    let tree = match early {
        true => Some(tree::read_tree(cfg, options, settings)?),
        false => None,
    };
    drop(read);
    let hosts = connecting
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    let ask = lock::Ask {
        listing: tree.as_ref().map(|t| LiveListing::new(&t.manifest, copies)),
        required: &cfg.required_shared(),
        create: true,
    };
    let runs = lock_everywhere(hosts, settings, owner, options.lock_wait, ask);
    Ok((runs, tree))
}

/// Whether the tree is read first and the lock step reads each host's state against it (one
/// remote step fewer per host): when nothing runs between the lock and the state read (no
/// build, or `--ref`; no `local_before` hook, which may change the hosts) and no lock is waited
/// for (the tree could change meanwhile).
pub(super) fn state_with_lock(cfg: &Config, options: &Options) -> bool {
    let builds = options.git_ref.is_none() && cfg.build.is_some();
    !builds && cfg.hooks.local_before.is_empty() && options.lock_wait.is_none()
}

/// Takes every connected host's lock (waiting up to `wait` for another deploy's), reading what
/// `ask` asks; nothing when a host could not be connected to.
fn lock_everywhere(
    hosts: Vec<fleet::Host>,
    settings: &Settings,
    owner: &str,
    wait: Option<Duration>,
    ask: lock::Ask,
) -> Vec<Run> {
    let mut runs: Vec<Run> = hosts.into_iter().map(Run::new).collect();
    if runs.iter().all(Run::ok) {
        settings.say("locking");
        each(&mut runs, settings.parallel, |r| {
            staging::lock_host(r, owner, wait, ask);
        });
    }
    runs
}
