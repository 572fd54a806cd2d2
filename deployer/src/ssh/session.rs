//! One SSH connection (`Remote`): TCP to the host or a tunnel through its jump hosts' sessions
//! (`chains`), then the handshake, host key and login (`login`). Channels of its own carry
//! streams (the upload) and the long-lived shell.

use super::chains;
use super::hub::Hub;
use super::jump::Jump;
use super::login::{Link, login, tcp_connect};
use super::shell::Shell;
use super::{SshError, SshSettings};
use std::path::PathBuf;
use std::sync::Arc;
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
            Some(_) => {
                let (socket, hub) = chains::tunnel(&route.jumps, name, identity, (host, port), s)?;
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

    /// As [`Remote::start`], for a command whose stdin is a stream (the upload): see [`Stream`].
    pub fn start_stream(&self, command: &str) -> Result<Stream, SshError> {
        Ok(Stream {
            channel: self.start(command)?,
            session: self.session.clone(),
        })
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

/// A command's channel written as a stream. A write that fails may leave libssh2 mid-packet, and
/// every later call on the session (closing this channel, the host's next step) would wait out
/// the whole timeout: see `give_up_after`.
pub struct Stream {
    channel: ssh2::Channel,
    session: ssh2::Session,
}

impl Stream {
    pub fn into_channel(self) -> ssh2::Channel {
        self.channel
    }
}

impl std::io::Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.channel
            .write(buf)
            .inspect_err(|e| super::give_up_after(&self.session, e))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.channel
            .flush()
            .inspect_err(|e| super::give_up_after(&self.session, e))
    }
}
