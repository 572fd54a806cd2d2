//! How the deployer reaches a host, and the one way it talks to it: SSH with libssh2 (ssh2),
//! no `ssh` subprocess. This folder owns the whole stack; the rest of the crate uses what this
//! file re-exports, never a child's path:
//! - `address`: `host[:port]` and `[v6]:port`, one reading for deploy.toml and ProxyJump;
//! - `openssh_config`: what the user's OpenSSH config says of a host (`[ssh] ssh_config`);
//! - `jump`: ProxyJump chains as OpenSSH writes them;
//! - `hub`: one session per jump host, carrying every tunnel through it (`tunnel`: one of them);
//! - `known_hosts`: host keys as OpenSSH keeps them (checked strictly, added atomically);
//! - `chains`: the jump host sessions of this process, one per chain;
//! - `login`: the SSH handshake over a socket, host key checked, user authenticated;
//! - `session`: a connection (`Remote`) to a host, directly or through its jump hosts;
//!   channels of its own for streams (the upload);
//! - `shell`: the long-lived `sh` per host that every remote step runs in.
//!
//! Invariant: every value interpolated into a remote script goes through [`quote`].

mod address;
mod chains;
mod hub;
mod jump;
mod known_hosts;
mod login;
mod openssh_config;
mod session;
mod shell;
mod tunnel;

pub use address::{BadAddress, host_port};
pub use jump::{BadJump, Jump, parse_jumps};
pub use openssh_config::SshConfigFile;
pub use session::{Remote, Route, Stream};
pub use shell::{LineLimits, Output, Shell, finish};

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// What this process asked of hosts: connections made, and remote commands (a script run in a
/// host's shell, or a command on a channel of its own). Each command is a round trip, the
/// figure a slow link multiplies; `-v` prints them after a deploy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub connections: usize,
    pub commands: usize,
}

static CONNECTIONS: AtomicUsize = AtomicUsize::new(0);
static COMMANDS: AtomicUsize = AtomicUsize::new(0);

/// The counts so far (see [`Usage`]).
pub fn usage() -> Usage {
    Usage {
        connections: CONNECTIONS.load(Ordering::Relaxed),
        commands: COMMANDS.load(Ordering::Relaxed),
    }
}

/// After a failed read or write the connection is gone, and libssh2 may be mid-packet: it sends
/// nothing else until that packet is through, so every later call on the session would wait out
/// the whole timeout. Non-blocking, they fail at once. A timeout alone is not that (the host is
/// slow, its session still works) unless a packet was left half sent.
fn give_up_after(session: &ssh2::Session, e: &std::io::Error) {
    let half_sent = matches!(
        session.block_directions(),
        ssh2::BlockDirections::Outbound | ssh2::BlockDirections::Both
    );
    if e.kind() != std::io::ErrorKind::TimedOut || half_sent {
        session.set_blocking(false);
    }
}

fn count_connection() {
    CONNECTIONS.fetch_add(1, Ordering::Relaxed);
}

fn count_command() {
    COMMANDS.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Unknown and changed keys are refused.
    Strict,
    /// Unknown keys are added to known_hosts; changed keys are still refused.
    AcceptNew,
}

#[derive(Debug, Clone)]
pub struct SshSettings {
    pub user: String,
    pub identity: Option<PathBuf>,
    pub known_hosts: PathBuf,
    pub policy: HostKeyPolicy,
    pub timeout: Duration,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to {host}: {message}")]
    Connect { host: String, message: String },
    #[error(
        "host key of {host} is unknown ({fingerprint}); verify it, then add it to {known_hosts} (ssh-keyscan) or pass --accept-new-host-keys"
    )]
    UnknownHostKey {
        host: String,
        fingerprint: String,
        known_hosts: String,
    },
    #[error(
        "HOST KEY OF {host} HAS CHANGED (now {fingerprint}): someone may be impersonating it; if the host was reinstalled, fix {known_hosts}"
    )]
    ChangedHostKey {
        host: String,
        fingerprint: String,
        known_hosts: String,
    },
    #[error("host key of {host} ({fingerprint}) is REVOKED in {known_hosts}: refusing to connect")]
    RevokedHostKey {
        host: String,
        fingerprint: String,
        known_hosts: String,
    },
    #[error("{host}: authentication as {user} failed: {message}")]
    Auth {
        host: String,
        user: String,
        message: String,
    },
    #[error("{host}: {message}")]
    Session { host: String, message: String },
}

/// Quotes for a POSIX shell: every interpolated path goes through this.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoting() {
        assert_eq!(super::quote("/srv/a b"), "'/srv/a b'");
        assert_eq!(super::quote("it's"), r"'it'\''s'");
        assert_eq!(super::quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }
}
