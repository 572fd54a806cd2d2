//! The jump host sessions of this process, one per chain (every hop's user, address and key):
//! each host behind a bastion gets its tunnel from the one session there (`hub`).

use super::hub::{Hub, OpenError};
use super::jump::Jump;
use super::login::{Link, login, tcp_connect};
use super::{SshError, SshSettings};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

/// Each chain's sessions. A chain has a second session only while a host behind it keeps the
/// first one's open waiting (see [`Hub::is_stuck`]).
type Chains = std::collections::BTreeMap<Vec<String>, Arc<Mutex<Chain>>>;
static CHAINS: Mutex<Chains> = Mutex::new(std::collections::BTreeMap::new());

#[derive(Default)]
struct Chain {
    hubs: Vec<Weak<Hub>>,
    /// The last login that failed, and when: whoever asks soon after takes its answer rather
    /// than trying again (200 hosts behind a bastion that is down must not wait 200 timeouts).
    failed: Option<(Instant, SshError)>,
}

/// A tunnel to `to` through the jump hosts of `chain`, and the session it runs in. A session
/// that is waiting on a host the jump host has not answered hands the request on: another
/// session takes it.
pub(super) fn tunnel(
    chain: &[Jump],
    name: &str,
    identity: Option<&PathBuf>,
    (host, port): (&str, u16),
    s: &SshSettings,
) -> Result<(UnixStream, Arc<Hub>), SshError> {
    let via = chain.last().map_or_else(String::new, ToString::to_string);
    let failed = |e: &dyn std::fmt::Display| SshError::Connect {
        host: name.to_owned(),
        message: format!(
            "jump host {via} (on the way to {name}) could not open a connection to {host}:{port}: {e}"
        ),
    };
    for _ in 0..3 {
        let hub = hub_for(chain, name, identity, s)?;
        match hub.open(host, port, s.timeout) {
            Ok(socket) => return Ok((socket, hub)),
            Err(OpenError::TryAnother) => continue,
            Err(OpenError::Failed(e)) => return Err(failed(&e)),
        }
    }
    Err(failed(
        &"every session to it waits on hosts it has not answered",
    ))
}

/// The session at the end of jump chain `chain`, logged in (through the chain before it) when
/// there is none alive yet. Logins to one chain wait for each other; other chains do not wait.
fn hub_for(
    chain: &[Jump],
    name: &str,
    identity: Option<&PathBuf>,
    s: &SshSettings,
) -> Result<Arc<Hub>, SshError> {
    let hop = |j: &Jump| Hop {
        user: j.user.clone().unwrap_or_else(|| s.user.clone()),
        key: j.identity.as_ref().or(identity).cloned(),
    };
    let key: Vec<String> = chain
        .iter()
        .map(|j| {
            let h = hop(j);
            format!("{}@{j} {:?}", h.user, h.key)
        })
        .collect();
    let asked = Instant::now();
    let slot = Arc::clone(toolkit_core::lock(&CHAINS).entry(key).or_default());
    let mut slot = toolkit_core::lock(&slot);
    slot.hubs
        .retain(|h| h.upgrade().is_some_and(|h| h.is_alive()));
    let usable = slot
        .hubs
        .iter()
        .filter_map(Weak::upgrade)
        .find(|h| !h.is_stuck());
    if let Some(hub) = usable {
        return Ok(hub);
    }
    // A login that failed since this host asked, or within a timeout before: its answer holds
    // (hosts worked on a batch at a time must not each wait out a bastion that is down).
    if let Some((at, e)) = &slot.failed
        && (*at > asked || at.elapsed() < s.timeout)
    {
        return Err(e.clone());
    }
    let Some((last, before)) = chain.split_last() else {
        return Err(SshError::Connect {
            host: name.to_owned(),
            message: "an empty jump chain".into(),
        });
    };
    match log_in(last, &hop(last), before, name, identity, s) {
        Ok(hub) => {
            slot.hubs.push(Arc::downgrade(&hub));
            slot.failed = None;
            Ok(hub)
        }
        Err(e) => {
            slot.failed = Some((Instant::now(), e.clone()));
            Err(e)
        }
    }
}

/// Who logs in to a hop, with which key.
struct Hop {
    user: String,
    key: Option<PathBuf>,
}

/// A new session to `last`, directly or through the chain `before` it, on a thread of its own.
fn log_in(
    last: &Jump,
    hop: &Hop,
    before: &[Jump],
    name: &str,
    identity: Option<&PathBuf>,
    s: &SshSettings,
) -> Result<Arc<Hub>, SshError> {
    let here = format!("jump host {last} (on the way to {name})");
    // The permit is held from the connection until the login is done (never while waiting for
    // the chain before this hop, which takes permits of its own).
    let (link, through, _permit) = match before {
        [] => {
            let permit = JumpLogins::acquire();
            let tcp = tcp_connect(&here, &last.host, last.port(), s.timeout)?;
            (Link::Tcp(tcp), None, permit)
        }
        _ => {
            let to = (last.host.as_str(), last.port());
            let (socket, hub) = tunnel(before, name, identity, to, s)?;
            (Link::Tunnel(socket), Some(hub), JumpLogins::acquire())
        }
    };
    let at = (last.host.as_str(), last.port());
    let (session, watch) = login(link, &here, at.0, at.1, &hop.user, hop.key.as_ref(), s)?;
    Hub::start(session, watch, through, s.timeout).map_err(|e| SshError::Session {
        host: name.to_owned(),
        message: format!("cannot start the session thread for {here}: {e}"),
    })
}

/// A permit to log in to a jump host; at most [`JumpLogins::MAX`] are held at once.
struct JumpLogins;

static JUMP_LOGINS: (std::sync::Mutex<usize>, std::sync::Condvar) =
    (std::sync::Mutex::new(0), std::sync::Condvar::new());

impl JumpLogins {
    /// Below sshd's default MaxStartups start (10), leaving room for other clients.
    const MAX: usize = 6;

    fn acquire() -> Self {
        let (count, freed) = &JUMP_LOGINS;
        let mut n = toolkit_core::lock(count);
        while *n >= Self::MAX {
            n = freed.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n += 1;
        Self
    }
}

impl Drop for JumpLogins {
    fn drop(&mut self) {
        let (count, freed) = &JUMP_LOGINS;
        let mut n = toolkit_core::lock(count);
        *n = n.saturating_sub(1);
        freed.notify_one();
    }
}
