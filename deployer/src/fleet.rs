//! The selected hosts and how a stage runs on them: every host in parallel (at most `parallel`
//! at a time, a worker taking the next host as soon as it is free), returning when all are done
//! — each call is a barrier. Also what a host's failure is ([`Stage`], [`Failure`]), written once.

use crate::config::Target;
use crate::layout::{self, HostState, LiveListing, StateReader};
use crate::settings::Settings;
use crate::ssh::{LineLimits, Output, Remote, Shell, SshError, SshSettings};
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Raises this process's soft limit of open files to its hard limit. Every host holds a socket
/// while the deploy runs (two through a bastion: the tunnel's socket pair), so a fleet of a few
/// hundred hosts passes the usual soft limit of 1,024 long before the hard one; Go's runtime and
/// OpenSSH's sshd raise it the same way. Failing to is not an error: the soft limit stays.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Runs `f` on every item, at most `parallel` at a time; results in the items' order.
pub fn each<H: Send, R: Send>(
    items: &mut [H],
    parallel: usize,
    f: impl Fn(&mut H) -> R + Sync,
) -> Vec<R> {
    let n = items.len();
    let slots: Vec<Mutex<(&mut H, Option<R>)>> =
        items.iter_mut().map(|h| Mutex::new((h, None))).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..parallel.clamp(1, n.max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(slot) = slots.get(i) else { break };
                    let mut slot = toolkit_core::lock(slot);
                    let r = f(slot.0);
                    slot.1 = Some(r);
                }
            });
        }
    });
    slots
        .into_iter()
        .filter_map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()).1)
        .collect()
}

/// Where on a host a command stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    State,
    Lock,
    Upload,
    SharedLinks,
    BeforePublish,
    Publish,
    AfterPublish,
    Health,
    Canary,
    Rollback,
    Switch,
    Unlock,
}

impl Stage {
    /// The name in output and in `revisions.log`'s `stage`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::State => "state",
            Stage::Lock => "lock",
            Stage::Upload => "upload",
            Stage::SharedLinks => "shared links",
            Stage::BeforePublish => "before_publish",
            Stage::Publish => "publish",
            Stage::AfterPublish => "after_publish",
            Stage::Health => "health",
            Stage::Canary => "canary",
            Stage::Rollback => "rollback",
            Stage::Switch => "switch",
            Stage::Unlock => "unlock",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a host is not going on, and at which stage. Every command prints it the same way:
/// `at <stage>: <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub stage: Stage,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}: {}", self.stage, self.message)
    }
}

/// Why a remote step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("not connected")]
    NotConnected,
    /// The step exited non-zero; its last lines of output, or its status.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Connection(#[from] SshError),
}

/// One host of a run: its connection, its shell, and how far it got.
pub struct Host {
    pub target: Target,
    pub remote: Option<Remote>,
    pub shell: Option<Shell>,
    pub failure: Option<Failure>,
    /// The layout as read when connecting or locking.
    pub state: HostState,
    /// This run holds the host's deploy lock.
    pub locked: bool,
}

impl Host {
    pub fn name(&self) -> &str {
        &self.target.name
    }

    /// The host as plain data, its connection closed: its target, and the layout read or why
    /// it could not be.
    pub fn into_layout(self) -> (Target, Result<HostState, Failure>) {
        let layout = match self.failure {
            Some(failure) => Err(failure),
            None => Ok(self.state),
        };
        (self.target, layout)
    }

    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }

    /// Records the first failure; later ones are consequences of it.
    pub fn fail(&mut self, stage: Stage, message: impl fmt::Display) {
        if self.failure.is_none() {
            // Often what a host said: shown and recorded escaped, never obeyed by a terminal.
            self.failure = Some(Failure {
                stage,
                message: crate::remote_text::printable(&message.to_string()).into_owned(),
            });
        }
    }

    /// Runs a step in the host's shell: its output when it exits 0, else what it said.
    pub fn run(&mut self, script: &str, timeout: Option<Duration>) -> Result<Output, StepError> {
        let o = self.run_output(script, timeout)?;
        if o.status == 0 {
            Ok(o)
        } else {
            Err(failed(&o))
        }
    }

    /// Runs a step in the host's shell: its output and status, whatever the status.
    pub fn run_output(
        &mut self,
        script: &str,
        timeout: Option<Duration>,
    ) -> Result<Output, StepError> {
        let shell = self.shell.as_mut().ok_or(StepError::NotConnected)?;
        shell.run(script, timeout).map_err(|e| {
            // The connection is gone: no later step can reach this host.
            self.shell = None;
            e.into()
        })
    }

    /// Runs a script that prints the layout (`layout::state_script`), its output read whole,
    /// line by line as it arrives, into a [`StateReader`] (matching the current release's
    /// listing as `listing` says): its exit status and the reader. An answer too large to read
    /// whole fails the step; it is never cut.
    pub fn read_layout<'m>(
        &mut self,
        script: &str,
        listing: Option<LiveListing<'m>>,
    ) -> Result<(i32, StateReader<'m>), StepError> {
        /// A listing of a million files is ~150 MB; a line is an entry, or an older
        /// deployer's whole manifest.
        const LIMITS: LineLimits = LineLimits {
            total: 1 << 30,
            line: 8 << 20,
        };
        let shell = self.shell.as_mut().ok_or(StepError::NotConnected)?;
        let mut reader = StateReader::new(listing);
        match shell.run_lines(script, None, LIMITS, &mut |l| reader.line(l)) {
            Ok(status) => Ok((status, reader)),
            Err(e) => {
                self.shell = None;
                Err(e.into())
            }
        }
    }

    /// Keeps an idle connection open (see [`Remote::keepalive`]).
    pub fn keepalive(&self) {
        if let Some(r) = &self.remote {
            r.keepalive();
        }
    }

    /// Runs `script`; a failure stops this host at `stage`. True when it ran.
    pub fn step(&mut self, stage: Stage, script: &str, timeout: Option<Duration>) -> bool {
        match self.run(script, timeout) {
            Ok(_) => true,
            Err(e) => {
                self.fail(stage, e);
                false
            }
        }
    }
}

/// A step that exited non-zero: its last lines of output, or its status.
pub fn failed(o: &Output) -> StepError {
    StepError::Failed(
        last_lines(&o.stdout, 8).unwrap_or_else(|| format!("remote step exited {}", o.status)),
    )
}

/// The last `n` non-empty lines of `text`, joined; `None` when there are none.
pub fn last_lines(text: &str, n: usize) -> Option<String> {
    /// What a failure keeps of a host's output: it is printed, and recorded on every host.
    const MAX: usize = 2000;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let joined = (!lines.is_empty()).then(|| lines[lines.len().saturating_sub(n)..].join(" | "))?;
    if joined.len() <= MAX {
        return Some(joined);
    }
    let mut cut = joined.len() - MAX;
    while !joined.is_char_boundary(cut) {
        cut += 1;
    }
    Some(format!("…{}", &joined[cut..]))
}

/// Connects to every target (host key checked, authenticated) and opens its shell.
pub fn connect(targets: &[Target], ssh: &SshSettings, parallel: usize) -> Vec<Host> {
    connect_with(targets, ssh, parallel, true)
}

/// Connects to every target without opening a shell: for commands that open channels of
/// their own (`logs -f`), to whom a shell would be one more session start per host.
pub fn connect_bare(targets: &[Target], ssh: &SshSettings, parallel: usize) -> Vec<Host> {
    connect_with(targets, ssh, parallel, false)
}

fn connect_with(targets: &[Target], ssh: &SshSettings, parallel: usize, shell: bool) -> Vec<Host> {
    let mut hosts: Vec<Host> = targets
        .iter()
        .map(|t| Host {
            target: t.clone(),
            remote: None,
            shell: None,
            failure: None,
            state: HostState::default(),
            locked: false,
        })
        .collect();
    each(&mut hosts, parallel, |h| {
        let t = &h.target;
        let connected = Remote::connect(&t.name, &t.host, t.port, &t.route, ssh).and_then(|r| {
            let s = if shell { Some(r.shell()?) } else { None };
            Ok((r, s))
        });
        match connected {
            Ok((r, s)) => {
                h.remote = Some(r);
                h.shell = s;
            }
            Err(e) => h.fail(Stage::Connect, e),
        }
    });
    hosts
}

/// Connects and reads every host's layout (no lock: read only): the shared files in
/// `required` checked, and with `listing` the current release's listing matched.
pub fn read(
    targets: &[Target],
    s: &Settings,
    listing: Option<LiveListing>,
    required: &[String],
) -> Vec<Host> {
    let mut hosts = connect(targets, &s.ssh, s.parallel);
    each(&mut hosts, s.parallel, |h| read_state(h, listing, required));
    hosts
}

/// Reads one connected host's layout into `h.state`; a failure stops it at `state`.
pub fn read_state(h: &mut Host, listing: Option<LiveListing>, required: &[String]) {
    if !h.ok() {
        return;
    }
    let script = layout::state_script(&h.target.deploy_to, listing.map(|l| l.sums()), required);
    match h.read_layout(&script, listing) {
        Ok((0, reader)) => match reader.finish() {
            Ok(state) if state.copy_lost && listing.is_some_and(|l| l.offer) => {
                read_state(h, listing.map(LiveListing::sent), required);
            }
            Ok(state) => h.state = state,
            Err(e) => h.fail(Stage::State, e),
        },
        Ok((status, reader)) => {
            let said = reader.other().join(" | ");
            h.fail(
                Stage::State,
                if said.is_empty() {
                    format!("remote step exited {status}")
                } else {
                    said
                },
            );
        }
        Err(e) => h.fail(Stage::State, e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_keeps_order_and_bounds_parallelism() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let mut items: Vec<u32> = (0..20).collect();
        let out = super::each(&mut items, 3, |x| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(2));
            running.fetch_sub(1, Ordering::SeqCst);
            *x += 1;
            *x * 10
        });
        assert_eq!(out, (1..=20).map(|x| x * 10).collect::<Vec<_>>());
        assert_eq!(items[0], 1);
        let peak = peak.load(Ordering::SeqCst);
        assert!(
            (2..=3).contains(&peak),
            "at most 3 at once, and more than one: {peak}"
        );
    }
}
