//! The deploy lock on each host: `mkdir .deploy/lock` (atomic: exactly one deployer creates
//! it) holding an `owner` line `user@host pid N since TIME`. A deployer removes a lock only when
//! that line is still its own (compare and delete); `unlock` clears a stale lock of this user and
//! machine whose process is gone, `unlock --force` any lock.

use crate::fleet::{Host, Stage, StepError};
use crate::layout::{LiveListing, state_script};
use crate::ssh::quote;
use std::time::{Duration, Instant};

/// A lock this run took and could not release: the host keeps it until `deployer unlock`.
#[derive(Debug, thiserror::Error)]
#[error(
    "the lock on {host} is still held{}: run `deployer unlock --hosts {host}` once it is reachable",
    cause.as_ref().map(|c| format!(" ({c})")).unwrap_or_default()
)]
pub struct LockHeld {
    pub host: String,
    /// Why releasing it failed; `None` when it was not tried (the host was already lost).
    pub cause: Option<StepError>,
}

/// Exit status of [`acquire_script`] when the lock is held; the holder follows `held=`.
pub const HELD: i32 = 11;
/// Exit status of [`acquire_script`] when `deploy_to` cannot be created.
pub const NO_DIR: i32 = 10;
/// Exit status of [`acquire_script`] when nothing was ever deployed there and the command is not
/// a deploy: the layout is not made for a task, a rollback or a cleanup.
pub const NOT_DEPLOYED: i32 = 12;

/// This process's owner line.
pub fn owner_line(user: &str) -> String {
    format!(
        "{user}@{} pid {} since {}",
        local_host(),
        std::process::id(),
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    )
}

pub fn local_host() -> String {
    toolkit_core::hostname()
}

/// Creates the layout's directories (`create`: a deploy; otherwise only the deployer's own, in a
/// layout that has releases), takes the lock, removes what uploads whose remote end was killed
/// (a reboot) left staged over an hour ago, then prints the state (with the current release's
/// listing when `manifest`; the `required` shared files checked).
pub fn acquire_script(
    deploy_to: &str,
    owner: &str,
    listing: Option<&[String]>,
    required: &[String],
    create: bool,
) -> String {
    let d = quote(deploy_to);
    let layout = match create {
        true => format!("mkdir -p {d}/releases {d}/shared {d}/.deploy/manifests {d}/.deploy/bad"),
        false => format!(
            "[ -d {d}/releases ] || exit {NOT_DEPLOYED}\nmkdir -p {d}/.deploy/manifests {d}/.deploy/bad"
        ),
    };
    format!(
        r#"{layout} || exit {NO_DIR}
if mkdir {d}/.deploy/lock 2>/dev/null; then
  printf '%s\n' {o} > {d}/.deploy/lock/owner || {{ rm -rf {d}/.deploy/lock; exit {NO_DIR}; }}
else
  printf 'held=%s\n' "$(head -n 1 {d}/.deploy/lock/owner 2>/dev/null)"; exit {HELD}
fi
find {d}/.deploy -maxdepth 1 -name 'staged-*' -mmin +60 -exec rm -f -- {{}} + 2>/dev/null
{state}"#,
        o = quote(owner),
        state = state_script(deploy_to, listing, required)
    )
}

/// What a host is asked when it is locked: what the current release's listing is read against
/// (none: no listing), the shared files that must be there, and
/// whether the layout is made when missing (a deploy; anything else fails on a host where
/// nothing was deployed rather than leave an empty layout there).
#[derive(Clone, Copy, Default)]
pub struct Ask<'a> {
    pub listing: Option<LiveListing<'a>>,
    pub required: &'a [String],
    pub create: bool,
}

/// Takes the lock on `h` and reads its state (see [`Ask`]); marks the host failed at `lock`
/// when it cannot.
pub fn acquire(h: &mut Host, owner: &str, ask: Ask) {
    acquire_waiting(h, owner, ask, None);
}

/// As [`acquire`]; a lock another deploy holds is waited for, up to `wait` (`--lock-wait`):
/// tried again every second or so, the holder shown when it changes, the wait reported.
pub fn acquire_waiting(h: &mut Host, owner: &str, ask: Ask, wait: Option<Duration>) {
    let started = Instant::now();
    let mut shown: Option<String> = None;
    loop {
        match try_acquire(h, owner, ask) {
            Some(holder) => {
                let waited = started.elapsed();
                let Some(limit) = wait.filter(|w| waited < *w) else {
                    let waited = if wait.is_some() {
                        format!(
                            " after waiting {}",
                            humantime::format_duration(Duration::from_secs(waited.as_secs()))
                        )
                    } else {
                        String::new()
                    };
                    return h.fail(
                        Stage::Lock,
                        format_args!(
                            "locked by another deploy: {holder}{waited} (wait for it to finish, or give --lock-wait; `deployer unlock` clears a stale lock)"
                        ),
                    );
                };
                if shown.as_deref() != Some(holder.as_str()) {
                    eprintln!(
                        "deployer: {}: locked by {holder}; waiting up to {} (--lock-wait)",
                        h.target.name,
                        humantime::format_duration(limit)
                    );
                    shown = Some(holder);
                }
                std::thread::sleep(Duration::from_secs(1).min(limit - waited));
            }
            None => {
                if h.locked && shown.is_some() {
                    eprintln!(
                        "deployer: {}: took the lock after waiting {}",
                        h.target.name,
                        humantime::format_duration(Duration::from_secs(
                            started.elapsed().as_secs()
                        ))
                    );
                }
                return;
            }
        }
    }
}

/// One attempt: `Some(holder)` when another deploy holds the lock; otherwise the host is
/// locked (and its state read) or marked failed.
fn try_acquire(h: &mut Host, owner: &str, ask: Ask) -> Option<String> {
    let d = h.target.deploy_to.clone();
    let sums = ask.listing.map(|l| l.sums());
    let script = acquire_script(&d, owner, sums, ask.required, ask.create);
    match h.read_layout(&script, ask.listing) {
        Ok((0, reader)) => {
            h.locked = true;
            match reader.finish() {
                // Locked: the listing is asked for again, sent.
                Ok(state) if state.copy_lost => {
                    let sent = ask.listing.map(LiveListing::sent);
                    crate::fleet::read_state(h, sent, ask.required);
                }
                Ok(state) => h.state = state,
                // Locked: the failure path releases it like any other.
                Err(e) => h.fail(Stage::State, e),
            };
        }
        Ok((HELD, reader)) => {
            // What the host says is data: shown escaped.
            let holder = reader
                .other()
                .iter()
                .find_map(|l| l.strip_prefix("held="))
                .unwrap_or("?");
            return Some(crate::remote_text::printable(holder).into_owned());
        }
        Ok((NOT_DEPLOYED, _)) => h.fail(
            Stage::Lock,
            format_args!("nothing deployed in {d} yet: deploy first"),
        ),
        Ok((NO_DIR, reader)) => h.fail(
            Stage::Lock,
            format_args!(
                "cannot create {d} (may the SSH user write there?): {}",
                reader.other().join(" | ")
            ),
        ),
        // The lock was taken; what followed it (the state, the current release's listing)
        // failed. Locked, so every way out releases it.
        Ok((status, reader)) => {
            h.locked = true;
            h.fail(
                Stage::State,
                format_args!(
                    "reading the host's state exited {status}: {}",
                    reader.other().join(" | ")
                ),
            );
        }
        // Lost while reading, maybe after the lock was taken: taken as locked, so the way out
        // releases it (only if it is this run's: the release compares the owner) or says it
        // could not.
        Err(e) => {
            h.locked = true;
            h.fail(Stage::Lock, e);
        }
    }
    None
}

/// Runs `before` (the run's last changes) then releases this run's lock, in one step. A host
/// that cannot be reached keeps its lock: the error says how to clear it.
pub fn release(h: &mut Host, owner: &str, before: &str) -> Result<(), LockHeld> {
    if !h.locked {
        return Ok(());
    }
    let script = format!("{before}\n{}", release_script(&h.target.deploy_to, owner));
    match h.run(&script, None) {
        Ok(_) => {
            h.locked = false;
            Ok(())
        }
        Err(e) => Err(LockHeld {
            host: h.name().to_owned(),
            cause: Some(e),
        }),
    }
}

/// Removes the lock only if `owner` still holds it; prints `released` or `held=<holder>`.
pub fn release_script(deploy_to: &str, owner: &str) -> String {
    let d = quote(deploy_to);
    format!(
        r#"h=$(head -n 1 {d}/.deploy/lock/owner 2>/dev/null)
if [ "$h" = {o} ]; then rm -rf {d}/.deploy/lock && echo released; elif [ -d {d}/.deploy/lock ]; then printf 'held=%s\n' "$h"; else echo free; fi"#,
        o = quote(owner)
    )
}

/// Removes the lock whoever holds it; prints the holder it removed.
pub fn force_script(deploy_to: &str) -> String {
    let d = quote(deploy_to);
    format!(
        r#"if [ -d {d}/.deploy/lock ]; then printf 'removed=%s\n' "$(head -n 1 {d}/.deploy/lock/owner 2>/dev/null)"; rm -rf {d}/.deploy/lock; else echo free; fi"#
    )
}

/// A lock left by this user on this machine by a process that no longer runs (a deployer that
/// was killed, or a host that went away mid-deploy) is safe to remove without `--force`.
pub fn is_stale_own(holder: &str, user: &str) -> bool {
    let me = format!("{user}@{} pid ", local_host());
    let Some(rest) = holder.strip_prefix(&me) else {
        return false;
    };
    let pid: Option<u32> = rest.split_whitespace().next().and_then(|p| p.parse().ok());
    match pid {
        Some(pid) => !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_only_when_ours_and_dead() {
        let me = owner_line("deploy");
        assert!(!is_stale_own(&me, "deploy"), "this process is alive");
        let dead = format!("deploy@{} pid 4000000000 since x", local_host());
        assert!(is_stale_own(&dead, "deploy"));
        assert!(!is_stale_own(&dead, "alice"));
        assert!(!is_stale_own(
            "deploy@elsewhere pid 4000000000 since x",
            "deploy"
        ));
    }
}
