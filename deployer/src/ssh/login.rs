//! The SSH handshake over a socket (TCP, or a tunnel through a jump host): the host key checked
//! against known_hosts (unknown, changed or revoked keys refused with their SHA256 fingerprint;
//! accepting new keys is opt-in), then the user authenticated with the key file or the agent.

use super::known_hosts::Verdict;
use super::{HostKeyPolicy, SshError, SshSettings};
use base64::Engine;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The socket a session runs over: TCP to the first hop, or a tunnel through a jump host.
pub(super) enum Link {
    Tcp(TcpStream),
    Tunnel(UnixStream),
}
/// A TCP connection to the first address of `host:port` that answers within `timeout`.
pub(super) fn tcp_connect(
    name: &str,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, SshError> {
    let connect_err = |message: String| SshError::Connect {
        host: name.to_owned(),
        message,
    };
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| connect_err(format!("cannot resolve: {e}")))?
        .collect();
    let mut last = String::from("no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(t) => {
                let _ = t.set_nodelay(true);
                return Ok(t);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(connect_err(last))
}

/// The least time between two keepalives on one connection.
const KEEPALIVE_SECS: u32 = 15;

/// The SSH handshake over `link`, the host key checked as `host:port`, then `user`
/// authenticated. Also returns a duplicate of the socket, for a tunnel to poll.
pub(super) fn login(
    link: Link,
    name: &str,
    host: &str,
    port: u16,
    user: &str,
    identity: Option<&PathBuf>,
    s: &SshSettings,
) -> Result<(ssh2::Session, OwnedFd), SshError> {
    let session_err = |e: &dyn std::fmt::Display| SshError::Session {
        host: name.to_owned(),
        message: e.to_string(),
    };
    let mut session = ssh2::Session::new().map_err(|e| session_err(&e))?;
    session.set_timeout(u32::try_from(s.timeout.as_millis()).unwrap_or(u32::MAX));
    let watch = match link {
        Link::Tcp(t) => {
            let w = t.as_fd().try_clone_to_owned();
            session.set_tcp_stream(t);
            w
        }
        Link::Tunnel(u) => {
            let w = u.as_fd().try_clone_to_owned();
            session.set_tcp_stream(u);
            w
        }
    }
    .map_err(|e| session_err(&e))?;
    session.handshake().map_err(|e| SshError::Connect {
        host: name.to_owned(),
        message: format!("SSH handshake: {e}"),
    })?;
    verify_host_key(&session, name, host, port, s)?;
    authenticate(&session, name, user, identity.map(PathBuf::as_path))?;
    // libssh2 sends keepalives only when asked ([`Remote::keepalive`]), at most this often.
    session.set_keepalive(false, KEEPALIVE_SECS);
    Ok((session, watch))
}

/// The key file first; the agent when there is none, or when the file did not do (an encrypted
/// key that the agent holds, as OpenSSH users expect). A failure names the key file and says
/// whether the agent was tried, and why not.
fn authenticate(
    session: &ssh2::Session,
    name: &str,
    user: &str,
    identity: Option<&Path>,
) -> Result<(), SshError> {
    let by_key = identity.map(|key| {
        session
            .userauth_pubkey_file(user, None, key, None)
            .map_err(|e| {
                if key.is_file() {
                    format!("the key {} was not accepted ({e})", key.display())
                } else {
                    format!(
                        "the key file {} cannot be read ({e}): check [ssh] identity",
                        key.display()
                    )
                }
            })
    });
    if let Some(Ok(())) = by_key {
        return Ok(());
    }
    let key_failed = by_key.and_then(Result::err);
    let agent = if std::env::var_os("SSH_AUTH_SOCK").is_some() {
        match session.userauth_agent(user) {
            Ok(()) => return Ok(()),
            Err(e) => format!("the SSH agent did not do either ({e})"),
        }
    } else {
        "no SSH agent to try (SSH_AUTH_SOCK is not set)".to_owned()
    };
    Err(SshError::Auth {
        host: name.to_owned(),
        user: user.to_owned(),
        message: match key_failed {
            Some(k) => format!("{k}; {agent}"),
            None => format!("no key file ([ssh] identity) and {agent}"),
        },
    })
}

fn verify_host_key(
    session: &ssh2::Session,
    name: &str,
    host: &str,
    port: u16,
    s: &SshSettings,
) -> Result<(), SshError> {
    let session_err = |m: String| SshError::Session {
        host: name.to_owned(),
        message: m,
    };
    let (key, key_type) = session
        .host_key()
        .ok_or_else(|| session_err("the server sent no host key".into()))?;
    let fingerprint = session
        .host_key_hash(ssh2::HashType::Sha256)
        .map(|h| {
            format!(
                "SHA256:{}",
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(h)
            )
        })
        .unwrap_or_else(|| "unknown fingerprint".into());
    let path: &Path = &s.known_hosts;
    let shown = path.display().to_string();
    let key = super::known_hosts::HostKey {
        blob: key,
        kind: key_type,
    };
    let system = Path::new(super::known_hosts::SYSTEM);
    let checked = super::known_hosts::check(session, &[path, system], host, port, &key)
        .map_err(|e| session_err(e.to_string()))?;
    let verdict = match checked {
        Verdict::Unknown if s.policy == HostKeyPolicy::AcceptNew => {
            super::known_hosts::add(session, path, host, port, &key)
                .map_err(|e| session_err(e.to_string()))?
        }
        other => other,
    };
    match verdict {
        Verdict::Known => Ok(()),
        Verdict::Changed => Err(SshError::ChangedHostKey {
            host: name.to_owned(),
            fingerprint,
            known_hosts: shown,
        }),
        Verdict::Revoked(file) => Err(SshError::RevokedHostKey {
            host: name.to_owned(),
            fingerprint,
            known_hosts: file.display().to_string(),
        }),
        Verdict::Unknown => Err(SshError::UnknownHostKey {
            host: name.to_owned(),
            fingerprint,
            known_hosts: shown,
        }),
    }
}
