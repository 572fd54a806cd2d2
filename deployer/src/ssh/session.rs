//! One SSH connection (`Remote`): TCP to the host or through its jump hosts, the host key
//! checked against known_hosts (unknown, changed or revoked keys refused with their SHA256
//! fingerprint; accepting new keys is opt-in), the user authenticated with the key file or the
//! agent. Channels of its own carry streams (the upload) and the long-lived shell.

use super::hub::Hub;
use super::jump::Jump;
use super::known_hosts::Verdict;
use super::shell::Shell;
use super::{HostKeyPolicy, SshError, SshSettings};
use base64::Engine;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

pub struct Remote {
    pub name: String,
    session: ssh2::Session,
    timeout: Duration,
    /// The jump host's session this one runs through (dropped after `session`).
    _through: Option<Arc<Hub>>,
}

/// How to reach one host beyond the shared [`SshSettings`]: what `~/.ssh/config` or the host's
/// own entry says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// Instead of [`SshSettings::user`].
    pub user: Option<String>,
    /// Instead of [`SshSettings::identity`].
    pub identity: Option<PathBuf>,
    /// Jump hosts, in order: the first is reached directly, each next through the one before.
    pub jumps: Vec<Jump>,
}

/// The socket a session runs over: TCP to the first hop, or a tunnel through a jump host.
enum Link {
    Tcp(TcpStream),
    Tunnel(UnixStream),
}

impl Remote {
    /// Connects to `host:port` (named `name` in messages), through `route`'s jump hosts if any:
    /// at every hop the host key is checked against known_hosts and the user authenticated.
    pub fn connect(
        name: &str,
        host: &str,
        port: u16,
        route: &Route,
        s: &SshSettings,
    ) -> Result<Self, SshError> {
        let identity = route.identity.as_ref().or(s.identity.as_ref());
        let (link, through) = match route.jumps.last() {
            None => (Link::Tcp(tcp_connect(name, host, port, s.timeout)?), None),
            Some(last) => {
                let hub = hub_for(&route.jumps, name, identity, s)?;
                let socket = tunnel(&hub, last, name, (host, port), s)?;
                (Link::Tunnel(socket), Some(hub))
            }
        };
        let user = route.user.as_deref().unwrap_or(&s.user);
        let (session, _) = login(link, name, host, port, user, identity, s)?;
        super::count_connection();
        Ok(Self {
            name: name.to_owned(),
            session,
            timeout: s.timeout,
            _through: through,
        })
    }

    /// Starts `command` on its own channel and returns it unread: the caller streams stdin
    /// (the upload) and then collects the result with [`finish`].
    pub fn start(&self, command: &str) -> Result<ssh2::Channel, SshError> {
        super::count_command();
        self.channel(command)
    }

    fn channel(&self, command: &str) -> Result<ssh2::Channel, SshError> {
        let err = |e: ssh2::Error| SshError::Session {
            host: self.name.clone(),
            message: e.to_string(),
        };
        let mut ch = self.session.channel_session().map_err(err)?;
        ch.exec(command).map_err(err)?;
        Ok(ch)
    }

    /// Opens the long-lived shell (see [`Shell`]).
    pub fn shell(&self) -> Result<Shell, SshError> {
        let pid = std::process::id();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Ok(Shell::new(
            self.name.clone(),
            self.channel("exec sh")?,
            self.session.clone(),
            format!("__deployer_done_{pid:x}{nanos:x}"),
            self.timeout,
        ))
    }

    /// Sends an SSH keepalive, so a connection left idle while this machine works (a long
    /// local build with the hosts locked) is not dropped by a NAT or firewall's idle timer.
    /// A failure shows at the next step, which names it.
    pub fn keepalive(&self) {
        let _ = self.session.keepalive_send();
    }

    /// Sets the timeout of every blocking SSH call on this connection.
    pub fn set_timeout(&self, timeout: Duration) {
        self.session
            .set_timeout(u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX));
    }
}

/// The jump host sessions of this process, one per chain (every hop's user, address and key):
/// each host behind a bastion gets its tunnel from the one session there.
/// A chain has a second session only while a host behind it keeps the first one's open waiting
/// (see [`Hub::is_stuck`]).
type Chains = std::collections::BTreeMap<Vec<String>, Arc<Mutex<Vec<Weak<Hub>>>>>;
static CHAINS: Mutex<Chains> = Mutex::new(std::collections::BTreeMap::new());

/// The session at the end of jump chain `chain`, logged in (through the chain before it) when
/// there is none alive yet. Logins to one chain wait for each other; other chains do not wait.
fn hub_for(
    chain: &[Jump],
    name: &str,
    identity: Option<&PathBuf>,
    s: &SshSettings,
) -> Result<Arc<Hub>, SshError> {
    let Some((last, before)) = chain.split_last() else {
        return Err(SshError::Connect {
            host: name.to_owned(),
            message: "an empty jump chain".into(),
        });
    };
    let key_of = |j: &Jump| j.identity.as_ref().or(identity).cloned();
    let user_of = |j: &Jump| j.user.clone().unwrap_or_else(|| s.user.clone());
    let key: Vec<String> = chain
        .iter()
        .map(|j| format!("{}@{j} {:?}", user_of(j), key_of(j)))
        .collect();
    let slot = Arc::clone(toolkit_core::lock(&CHAINS).entry(key).or_default());
    let mut slot = toolkit_core::lock(&slot);
    slot.retain(|h| h.upgrade().is_some_and(|h| h.is_alive()));
    if let Some(hub) = slot
        .iter()
        .filter_map(Weak::upgrade)
        .find(|h| !h.is_stuck())
    {
        return Ok(hub);
    }
    let here = format!("jump host {last} (on the way to {name})");
    let (link, through) = match before.last() {
        None => (
            Link::Tcp(tcp_connect(&here, &last.host, last.port(), s.timeout)?),
            None,
        ),
        Some(previous) => {
            let hub = hub_for(before, name, identity, s)?;
            let socket = tunnel(&hub, previous, name, (&last.host, last.port()), s)?;
            (Link::Tunnel(socket), Some(hub))
        }
    };
    let _permit = JumpLogins::acquire();
    let key = key_of(last);
    let (session, watch) = login(
        link,
        &here,
        &last.host,
        last.port(),
        &user_of(last),
        key.as_ref(),
        s,
    )?;
    let hub = Hub::start(session, watch, through).map_err(|e| SshError::Session {
        host: name.to_owned(),
        message: format!("cannot start the session thread for {here}: {e}"),
    })?;
    slot.push(Arc::downgrade(&hub));
    Ok(hub)
}

/// A connection to `to` through `via`'s session (`hub`).
fn tunnel(
    hub: &Hub,
    via: &Jump,
    name: &str,
    (host, port): (&str, u16),
    s: &SshSettings,
) -> Result<UnixStream, SshError> {
    hub.open(host, port, s.timeout)
        .map_err(|e| SshError::Connect {
            host: name.to_owned(),
            message: format!(
                "jump host {via} (on the way to {name}) could not open a connection to {host}:{port}: {e}"
            ),
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

/// A TCP connection to the first address of `host:port` that answers within `timeout`.
fn tcp_connect(
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
fn login(
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
