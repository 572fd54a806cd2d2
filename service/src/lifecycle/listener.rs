//! Where the listening socket comes from: systemd's socket activation, the server being
//! replaced by an upgrade, or a fresh bind of `--listen`.
//!
//! Both hand-overs use systemd's protocol (`LISTEN_FDS`, fds from 3 on, `LISTEN_FDNAMES`); an
//! upgrade adds one more fd named `upgrade`: a stream back to whoever started this server, on
//! which it says when it is ready (or why it failed).

use std::io::Write;
use std::os::unix::net::UnixStream;

/// The name the upgrade channel carries in `LISTEN_FDNAMES`.
pub(crate) const UPGRADE_FD_NAME: &str = "upgrade";
/// The name the handed-over listening socket carries.
pub(crate) const HTTP_FD_NAME: &str = "http";

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("the socket passed in LISTEN_FDS is not usable: {0}")]
    Inherited(#[source] std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// What this process was handed at start.
#[derive(Debug, Default)]
pub struct Inherited {
    listener: Option<std::net::TcpListener>,
    upgrade: Option<UpgradeChannel>,
    origin: Origin,
    /// Started by a running server's upgrade (not by `upgrade --start`): that server still
    /// serves, and owns the journal until it has closed.
    replaces: bool,
}

impl Inherited {
    /// Takes the sockets passed by systemd or by an upgrading server, and clears `LISTEN_FDS` and
    /// `LISTEN_PID` so nothing this process starts inherits them. Call it first thing in `main`,
    /// before any thread exists (it changes the environment).
    pub fn from_env() -> Result<Self, ListenError> {
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .map(|n| n.split(':').map(str::to_owned).collect())
            .unwrap_or_default();
        let mut fds = listenfd::ListenFd::from_env();
        let mut inherited = Self::default();
        for i in 0..fds.len() {
            if names.get(i).map(String::as_str) == Some(UPGRADE_FD_NAME) {
                let stream = fds
                    .take_custom::<UnixStream>(i, libc::AF_UNIX, libc::SOCK_STREAM, "unix stream")
                    .map_err(ListenError::Inherited)?;
                inherited.upgrade = stream.map(UpgradeChannel);
            } else if inherited.listener.is_none() {
                inherited.replaces = names.get(i).map(String::as_str) == Some(HTTP_FD_NAME);
                // systemd names it after the socket unit unless told otherwise: take the first.
                inherited.listener = fds.take_tcp_listener(i).map_err(ListenError::Inherited)?;
            }
        }
        if inherited.upgrade.is_some() {
            inherited.origin = Origin::Upgrade;
        }
        inherited.replaces &= inherited.upgrade.is_some();
        Ok(inherited)
    }

    /// Whether a running server started this one to replace it (an upgrade).
    pub fn replaces_a_server(&self) -> bool {
        self.replaces
    }

    /// The inherited listener, or a new one bound to `addr`.
    pub(crate) fn listener(
        &mut self,
        addr: &str,
    ) -> Result<(tokio::net::TcpListener, Origin), ListenError> {
        match self.listener.take() {
            Some(l) => {
                let l = l
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpListener::from_std(l))
                    .map_err(ListenError::Inherited)?;
                Ok((l, self.origin))
            }
            None => {
                let bind = |addr: &str| -> std::io::Result<tokio::net::TcpListener> {
                    let l = std::net::TcpListener::bind(addr)?;
                    l.set_nonblocking(true)?;
                    tokio::net::TcpListener::from_std(l)
                };
                bind(addr)
                    .map(|l| (l, Origin::Bound))
                    .map_err(|source| ListenError::Bind {
                        addr: addr.to_owned(),
                        source,
                    })
            }
        }
    }

    pub(crate) fn take_upgrade_channel(&mut self) -> Option<UpgradeChannel> {
        self.upgrade.take()
    }

    /// Tells the process that started this server (an upgrading server, or `upgrade --start`)
    /// why it could not start; nothing when none is waiting.
    pub fn failed(&mut self, error: &str) {
        if let Some(channel) = self.upgrade.take() {
            channel.failed(error);
        }
    }
}

/// Where the listening socket came from (logged at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Origin {
    #[default]
    Systemd,
    Upgrade,
    Bound,
}

impl Origin {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Origin::Systemd => "systemd socket",
            Origin::Upgrade => "handed over by the previous server",
            Origin::Bound => "bound",
        }
    }
}

/// The new server's side of the stream to the process that started it.
#[derive(Debug)]
pub(crate) struct UpgradeChannel(UnixStream);

/// What a new server tells the process that started it: one line.
pub(crate) const READY: &str = "READY";
pub(crate) const ERROR: &str = "ERROR";

impl UpgradeChannel {
    pub(crate) fn ready(&mut self) {
        // The starter may have given up (timed out) already; then there is no one to tell.
        let _ = writeln!(self.0, "{READY}");
    }

    pub(crate) fn failed(mut self, error: &str) {
        let _ = writeln!(self.0, "{ERROR} {}", error.replace('\n', " "));
    }
}
