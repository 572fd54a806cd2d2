//! `deployer logs [-n N] [-f]`: the last lines of the service's log on every selected host (the
//! config's `log`, relative to `deploy_to`: `shared/usersvc.log` by default), each line
//! prefixed with its host; with `-f`, followed on every host at once until Ctrl-C.

use crate::config::Target;
use crate::fleet;
use crate::host_output::{Executed, run_everywhere};
use crate::outcome::{Outcome, Unfinished};
use crate::remote_text::printable;
use crate::settings::Settings;
use crate::ssh::quote;
use std::fmt;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

/// The last `lines` lines of `log` (relative to each host's `deploy_to`) on every host.
pub fn logs(targets: &[Target], settings: &Settings, log: &str, lines: u32) -> Executed {
    run_everywhere(targets, settings, false, |h| {
        let path = quote(&format!("{}/{log}", h.target.deploy_to));
        format!("tail -n {lines} -- {path}\n")
    })
}

/// What `logs -f` leaves: the hosts that could not be followed to the end, and why.
pub struct Followed {
    pub lost: Vec<(String, String)>,
}

impl fmt::Display for Followed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (host, why) in &self.lost {
            writeln!(f, "{host}: stopped following: {}", printable(why))?;
        }
        Ok(())
    }
}

impl Outcome for Followed {
    fn verdict(&self) -> Result<(), Unfinished> {
        if self.lost.is_empty() {
            Ok(())
        } else {
            let names: Vec<&str> = self.lost.iter().map(|(h, _)| h.as_str()).collect();
            Err(Unfinished::Exec(names.join(", ")))
        }
    }
}

/// A line longer than this is printed in pieces (a log is data: its size is not ours to trust).
const MAX_LINE: usize = 64 * 1024;

/// `logs -f`: the last `lines` lines of every host's log, then each new line as it is
/// written, prefixed with its host, until Ctrl-C/SIGTERM (exit 0) or until no host is left.
/// The remote `tail -F` follows a log that is rotated or not there yet, and ends when the
/// connection does (it waits on the channel's stdin), so nothing is left running on a host.
pub fn follow(targets: &[Target], settings: &Settings, log: &str, lines: u32) -> Followed {
    let hosts = fleet::connect_bare(targets, &settings.ssh, settings.parallel);
    let (done, ended) = mpsc::channel::<(String, Option<String>)>();
    // Set when stdout is gone (`deployer logs -f | head`): the follow is over.
    let closed = Arc::new(AtomicBool::new(false));
    let mut lost = Vec::new();
    let mut following = 0;
    for mut h in hosts {
        let name = h.target.name.clone();
        let path = quote(&format!("{}/{log}", h.target.deploy_to));
        let script = format!(
            "tail -n {lines} -F -- {path} 2>&1 </dev/null & t=$!\ncat >/dev/null\nkill $t 2>/dev/null\n"
        );
        let started = match (h.remote.take(), h.failure) {
            (Some(remote), None) => remote.start(&script).map(|ch| (remote, ch)),
            (_, failure) => {
                lost.push((name, failure.map(|f| f.message).unwrap_or_default()));
                continue;
            }
        };
        let (remote, channel) = match started {
            Ok(x) => x,
            Err(e) => {
                lost.push((name, e.to_string()));
                continue;
            }
        };
        // No timeout on reads: a quiet log is not a dead host.
        remote.set_timeout(Duration::ZERO);
        let done = done.clone();
        let closed = closed.clone();
        following += 1;
        std::thread::spawn(move || {
            let why = stream(channel, &name, &closed).err();
            drop(remote);
            let _ = done.send((name, why));
        });
    }
    drop(done);
    while following > 0 && !settings.interrupted() && !closed.load(Ordering::Relaxed) {
        match ended.recv_timeout(Duration::from_millis(100)) {
            Ok((name, why)) => {
                following -= 1;
                lost.push((name, why.unwrap_or_else(|| "the log ended".into())));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // Returning ends the process: every connection closes, and each host's tail with it.
    Followed { lost }
}

/// Prints what `channel` carries, line by line, prefixed with `name`, until it ends.
fn stream(mut channel: ssh2::Channel, name: &str, closed: &AtomicBool) -> Result<(), String> {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let n = channel.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            print_lines(name, &mut pending, true, closed);
            return Ok(());
        }
        pending.extend_from_slice(&chunk[..n]);
        if !print_lines(name, &mut pending, false, closed) {
            return Err("stdout is closed".into());
        }
    }
}

/// Prints the complete lines of `pending` (all of it when `all`, or when a line is too long),
/// keeping the rest. False (and `closed` set) when stdout is gone.
fn print_lines(name: &str, pending: &mut Vec<u8>, all: bool, closed: &AtomicBool) -> bool {
    let end = match pending.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if all || pending.len() > MAX_LINE => pending.len(),
        None => return true,
    };
    let text = String::from_utf8_lossy(&pending[..end]).into_owned();
    pending.drain(..end);
    let mut out = std::io::stdout().lock();
    let written = text
        .lines()
        .try_for_each(|line| writeln!(out, "{name}: {}", printable(line)))
        .and_then(|()| out.flush());
    if written.is_err() {
        closed.store(true, Ordering::Relaxed);
    }
    written.is_ok()
}
