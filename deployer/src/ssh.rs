//! SSH to one host with libssh2 (ssh2): connect timeout, strict host-key checking against
//! known_hosts (unknown or changed keys refused with their SHA256 fingerprint; accepting new keys
//! is opt-in), key-file or agent authentication, and remote commands with their exit status.

use base64::Engine;
use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

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

#[derive(Debug, thiserror::Error)]
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

/// The output of one remote command.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

pub struct Remote {
    pub name: String,
    session: ssh2::Session,
}

/// `[host]:port` as known_hosts writes non-default ports.
fn known_hosts_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

impl Remote {
    pub fn connect(name: &str, host: &str, port: u16, s: &SshSettings) -> Result<Self, SshError> {
        let connect_err = |message: String| SshError::Connect {
            host: name.to_owned(),
            message,
        };
        let session_err = |e: ssh2::Error| SshError::Session {
            host: name.to_owned(),
            message: e.to_string(),
        };
        let addrs: Vec<_> = (host, port)
            .to_socket_addrs()
            .map_err(|e| connect_err(format!("cannot resolve: {e}")))?
            .collect();
        let mut last = String::from("no address");
        let mut tcp = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, s.timeout) {
                Ok(t) => {
                    tcp = Some(t);
                    break;
                }
                Err(e) => last = e.to_string(),
            }
        }
        let tcp = tcp.ok_or_else(|| connect_err(last))?;
        let mut session = ssh2::Session::new().map_err(session_err)?;
        session.set_timeout(u32::try_from(s.timeout.as_millis()).unwrap_or(u32::MAX));
        session.set_tcp_stream(tcp);
        session
            .handshake()
            .map_err(|e| connect_err(format!("SSH handshake: {e}")))?;
        verify_host_key(&session, name, host, port, s)?;
        match &s.identity {
            Some(key) => session.userauth_pubkey_file(&s.user, None, key, None),
            None => session.userauth_agent(&s.user),
        }
        .map_err(|e| SshError::Auth {
            host: name.to_owned(),
            user: s.user.clone(),
            message: e.to_string(),
        })?;
        Ok(Self {
            name: name.to_owned(),
            session,
        })
    }

    /// Runs `script` with `sh -c` semantics; one exec channel (each costs ~200 ms of sshd fork,
    /// so callers batch their remote work into few scripts).
    pub fn exec(&self, script: &str) -> Result<Output, SshError> {
        let err = |e: &dyn std::fmt::Display| SshError::Session {
            host: self.name.clone(),
            message: e.to_string(),
        };
        let mut ch = self.session.channel_session().map_err(|e| err(&e))?;
        ch.exec(script).map_err(|e| err(&e))?;
        let mut stdout = String::new();
        ch.read_to_string(&mut stdout).map_err(|e| err(&e))?;
        let mut stderr = String::new();
        ch.stderr()
            .read_to_string(&mut stderr)
            .map_err(|e| err(&e))?;
        ch.wait_close().map_err(|e| err(&e))?;
        Ok(Output {
            status: ch.exit_status().map_err(|e| err(&e))?,
            stdout,
            stderr,
        })
    }
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
    let mut known = session
        .known_hosts()
        .map_err(|e| session_err(e.to_string()))?;
    let path: &Path = &s.known_hosts;
    if path.exists() {
        known
            .read_file(path, ssh2::KnownHostFileKind::OpenSSH)
            .map_err(|e| session_err(format!("reading {}: {e}", path.display())))?;
    }
    let shown = path.display().to_string();
    match known.check_port(host, port, key) {
        ssh2::CheckResult::Match => Ok(()),
        ssh2::CheckResult::Mismatch => Err(SshError::ChangedHostKey {
            host: name.to_owned(),
            fingerprint,
            known_hosts: shown,
        }),
        ssh2::CheckResult::NotFound if s.policy == HostKeyPolicy::AcceptNew => known
            .add(
                &known_hosts_name(host, port),
                key,
                "added by deployer",
                key_type.into(),
            )
            .and_then(|()| known.write_file(path, ssh2::KnownHostFileKind::OpenSSH))
            .map_err(|e| session_err(format!("adding the host key to {shown}: {e}"))),
        ssh2::CheckResult::NotFound => Err(SshError::UnknownHostKey {
            host: name.to_owned(),
            fingerprint,
            known_hosts: shown,
        }),
        ssh2::CheckResult::Failure => Err(session_err(format!(
            "cannot check the host key against {shown}"
        ))),
    }
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
