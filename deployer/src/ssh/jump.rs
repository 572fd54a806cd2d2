//! Jump hosts (OpenSSH's `ProxyJump`): the `[user@]host[:port]` chain, and the tunnel that
//! carries the next hop's SSH connection through a jump host's direct-tcpip channel. Each
//! tunnel is a socket pair pumped by a thread of its own: the next session runs over one end
//! as it would over TCP, so host-key checks and authentication are the same at every hop, and
//! no `ssh` subprocess is involved.

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

/// One hop of a jump chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jump {
    /// `None`: the user the deploy logs in as.
    pub user: Option<String>,
    pub host: String,
    /// `None`: as written without one (22, unless `ssh_config` says otherwise).
    pub port: Option<u16>,
    /// The key for this hop (`ssh_config`'s IdentityFile for it); `None`: the deploy's.
    pub identity: Option<std::path::PathBuf>,
}

impl Jump {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(22)
    }
}

impl std::fmt::Display for Jump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port())
        } else {
            write!(f, "{}:{}", self.host, self.port())
        }
    }
}

/// A jump chain that is not `[user@]host[:port]`, comma-separated.
#[derive(Debug, thiserror::Error)]
#[error("proxy_jump {0:?} is not [user@]host[:port], comma-separated (e.g. \"deploy@bastion:22\")")]
pub struct BadJump(pub String);

/// Parses OpenSSH's ProxyJump syntax: `[user@]host[:port]` hops, comma-separated, each may be
/// written `ssh://…`; `none` (or nothing) is no jump. A port left out is 22.
pub fn parse_jumps(text: &str) -> Result<Vec<Jump>, BadJump> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|hop| parse_hop(hop.trim()))
        .collect::<Option<_>>()
        .ok_or_else(|| BadJump(text.to_owned()))
}

fn parse_hop(hop: &str) -> Option<Jump> {
    let hop = hop.strip_prefix("ssh://").unwrap_or(hop);
    let (user, rest) = match hop.rsplit_once('@') {
        Some((u, r)) if !u.is_empty() => (Some(u.to_owned()), r),
        Some(_) => return None,
        None => (None, hop),
    };
    let (host, port) = super::address::host_port(rest).ok()?;
    let valid = !host.is_empty()
        && !host.starts_with('-')
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c));
    valid.then(|| Jump {
        user,
        host: host.to_owned(),
        port,
        identity: None,
    })
}

/// Carries bytes between `channel` (a direct-tcpip channel of `session`) and `local` until
/// either side ends, on a thread of its own. `watch` is the session's own socket (a duplicate),
/// polled so the thread sleeps while nothing moves. The thread owns the jump host's session:
/// it is dropped (its socket closed) when the tunnel ends.
pub fn spawn_tunnel<W: AsFd + Send + 'static>(
    session: ssh2::Session,
    channel: ssh2::Channel,
    local: UnixStream,
    watch: W,
) -> std::io::Result<()> {
    local.set_nonblocking(true)?;
    session.set_blocking(false);
    std::thread::Builder::new()
        .name("ssh-jump".into())
        .spawn(move || pump(&session, channel, local, watch))
        .map(drop)
}

fn pump(
    session: &ssh2::Session,
    mut channel: ssh2::Channel,
    mut local: UnixStream,
    watch: impl AsFd,
) {
    let mut to_local: Vec<u8> = Vec::new();
    let mut to_remote: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // Each direction: read when the last read is delivered, then deliver what is pending.
        let inbound = carry(&mut channel, &mut local, &mut to_local, &mut buf);
        let outbound = carry(&mut local, &mut channel, &mut to_remote, &mut buf);
        match (inbound, outbound) {
            (Flow::Ended, _) => return,
            // The session above was dropped: the tunnel is done.
            (_, Flow::Ended) => {
                let _ = channel.send_eof();
                return;
            }
            (Flow::Moved, _) | (_, Flow::Moved) => continue,
            (Flow::Idle, Flow::Idle) => {}
        }
        if !wait(session, &watch, &local, &to_local, &to_remote) {
            let _ = channel.send_eof();
            return;
        }
    }
}

/// What one pass over a direction did.
enum Flow {
    Moved,
    Idle,
    /// The source ended (EOF, or a close without one) or either side failed.
    Ended,
}

/// Reads from `from` when `pending` is empty, then writes what is pending to `to`, without
/// blocking (both sides are non-blocking).
fn carry(from: &mut impl Read, to: &mut impl Write, pending: &mut Vec<u8>, buf: &mut [u8]) -> Flow {
    let blocked = |e: &std::io::Error| e.kind() == ErrorKind::WouldBlock;
    let mut moved = false;
    if pending.is_empty() {
        match from.read(buf) {
            Ok(0) => return Flow::Ended,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                moved = true;
            }
            Err(e) if blocked(&e) => {}
            Err(_) => return Flow::Ended,
        }
    }
    if !pending.is_empty() {
        match to.write(pending) {
            Ok(n) => {
                pending.drain(..n);
                moved |= n > 0;
            }
            Err(e) if blocked(&e) => {}
            Err(_) => return Flow::Ended,
        }
    }
    if moved { Flow::Moved } else { Flow::Idle }
}

/// Sleeps until a socket can take the tunnel further. The session's socket is watched for input
/// only when that input can be used (there is room to read into, or a write waits for the
/// window to open), else unread data would wake us forever; a short timeout covers packets
/// libssh2 queued while a write waited. False when either side hung up.
fn wait(
    session: &ssh2::Session,
    watch: &impl AsFd,
    local: &UnixStream,
    to_local: &[u8],
    to_remote: &[u8],
) -> bool {
    let mut remote_flags = PollFlags::empty();
    if to_local.is_empty() || !to_remote.is_empty() {
        remote_flags |= PollFlags::POLLIN;
    }
    if matches!(
        session.block_directions(),
        ssh2::BlockDirections::Outbound | ssh2::BlockDirections::Both
    ) {
        remote_flags |= PollFlags::POLLOUT;
    }
    let mut local_flags = PollFlags::empty();
    if to_remote.is_empty() {
        local_flags |= PollFlags::POLLIN;
    }
    if !to_local.is_empty() {
        local_flags |= PollFlags::POLLOUT;
    }
    let mut fds = [
        PollFd::new(watch.as_fd(), remote_flags),
        PollFd::new(local.as_fd(), local_flags),
    ];
    if poll(&mut fds, PollTimeout::from(200u16)).is_err() {
        return false;
    }
    // Either side hung up: whatever is still buffered has nobody left to read it.
    let gone = PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL;
    !fds.iter()
        .any(|f| f.revents().is_some_and(|r| r.intersects(gone)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_chains_parse_as_openssh_writes_them() {
        let chain =
            parse_jumps("deploy@bastion:2222, ssh://inner,ops@[fd00::1]:22").expect("valid");
        assert_eq!(
            chain,
            [
                Jump {
                    user: Some("deploy".into()),
                    host: "bastion".into(),
                    port: Some(2222),
                    identity: None
                },
                Jump {
                    user: None,
                    host: "inner".into(),
                    port: None,
                    identity: None
                },
                Jump {
                    user: Some("ops".into()),
                    host: "fd00::1".into(),
                    port: Some(22),
                    identity: None
                },
            ]
        );
        assert_eq!(chain[2].to_string(), "ops@[fd00::1]:22");
        assert!(parse_jumps("none").expect("none").is_empty());
        for bad in [
            "bastion:http",
            "@bastion",
            "-oProxyCommand=x",
            "a,,b",
            "host:0",
            "[::1",
        ] {
            assert!(parse_jumps(bad).is_err(), "{bad}");
        }
    }
}
