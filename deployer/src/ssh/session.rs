//! SSH to one host with libssh2 (ssh2): connect timeout, strict host-key checking against
//! known_hosts (unknown or changed keys refused with their SHA256 fingerprint; accepting new keys
//! is opt-in), key-file or agent authentication, and remote commands with their exit status.

use crate::jump::Jump;
use crate::known_hosts::Verdict;
use base64::Engine;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
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
    timeout: Duration,
}

/// A step's output cut into lines as it arrives, within [`LineLimits`]: what is kept is the one
/// line not ended yet.
struct Lines {
    pending: Vec<u8>,
    total: u64,
    limits: LineLimits,
}

impl Lines {
    fn new(limits: LineLimits) -> Self {
        Self {
            pending: Vec::new(),
            total: 0,
            limits,
        }
    }

    /// Hands every line `chunk` completes to `on_line`; past a limit, which one.
    fn feed(&mut self, chunk: &[u8], on_line: &mut dyn FnMut(&[u8])) -> Result<(), String> {
        self.total += chunk.len() as u64;
        if self.total > self.limits.total {
            return Err(format!("over {} bytes", self.limits.total));
        }
        self.pending.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(end) = self.pending[start..].iter().position(|&b| b == b'\n') {
            if end > self.limits.line {
                return Err(format!("a line over {} bytes", self.limits.line));
            }
            on_line(&self.pending[start..start + end]);
            start += end + 1;
        }
        self.pending.drain(..start);
        if self.pending.len() > self.limits.line {
            return Err(format!("a line over {} bytes", self.limits.line));
        }
        Ok(())
    }

    /// The last line, when the output did not end with a newline.
    fn finish(self, on_line: &mut dyn FnMut(&[u8])) {
        if !self.pending.is_empty() {
            on_line(&self.pending);
        }
    }
}

/// A long-lived `sh` on the host, fed scripts one at a time. sshd takes ~100 ms to start each
/// session channel, a step through this shell well under 1 ms, so the deploy flow runs every
/// remote step here and opens one extra channel only for the upload stream.
pub struct Shell {
    host: String,
    channel: ssh2::Channel,
    session: ssh2::Session,
    marker: String,
    default_timeout: Duration,
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
        let (first_host, first_port) = route
            .jumps
            .first()
            .map_or((host, port), |j| (j.host.as_str(), j.port()));
        let hop_name = |j: &Jump| format!("jump host {j} (on the way to {name})");
        let first_name = route
            .jumps
            .first()
            .map_or_else(|| name.to_owned(), hop_name);
        // sshd's MaxStartups (10:30:100 by default) drops unauthenticated connections beyond
        // ten at random: however many hosts are worked on at once, at most a few logins to
        // jump hosts are under way at any moment.
        let permit = (!route.jumps.is_empty()).then(JumpLogins::acquire);
        let mut link = Link::Tcp(tcp_connect(&first_name, first_host, first_port, s.timeout)?);
        for (i, j) in route.jumps.iter().enumerate() {
            let (next_host, next_port) = route
                .jumps
                .get(i + 1)
                .map_or((host, port), |n| (n.host.as_str(), n.port()));
            let here = hop_name(j);
            let user = j.user.as_deref().unwrap_or(&s.user);
            let key = j.identity.as_ref().or(identity);
            let (session, watch) = login(link, &here, &j.host, j.port(), user, key, s)?;
            let channel = session
                .channel_direct_tcpip(next_host, next_port, None)
                .map_err(|e| SshError::Connect {
                    host: name.to_owned(),
                    message: format!(
                        "{here} could not open a connection to {next_host}:{next_port}: {e}"
                    ),
                })?;
            let (ours, theirs) = UnixStream::pair().map_err(|e| SshError::Session {
                host: name.to_owned(),
                message: format!("cannot make a socket pair for the tunnel: {e}"),
            })?;
            crate::jump::spawn_tunnel(session, channel, theirs, watch).map_err(|e| {
                SshError::Session {
                    host: name.to_owned(),
                    message: format!("cannot start the tunnel through {here}: {e}"),
                }
            })?;
            link = Link::Tunnel(ours);
        }
        drop(permit);
        let user = route.user.as_deref().unwrap_or(&s.user);
        let (session, _) = login(link, name, host, port, user, identity, s)?;
        Ok(Self {
            name: name.to_owned(),
            session,
            timeout: s.timeout,
        })
    }

    /// Starts `command` on its own channel and returns it unread: the caller streams stdin
    /// (the upload) and then collects the result with [`finish`].
    pub fn start(&self, command: &str) -> Result<ssh2::Channel, SshError> {
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
        Ok(Shell {
            host: self.name.clone(),
            channel: self.start("exec sh")?,
            session: self.session.clone(),
            marker: format!("__deployer_done_{pid:x}{nanos:x}"),
            default_timeout: self.timeout,
        })
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

/// Closes our side of `ch` (EOF on the remote's stdin) and waits for its exit status and output.
pub fn finish(host: &str, mut ch: ssh2::Channel) -> Result<Output, SshError> {
    let err = |e: &dyn std::fmt::Display| SshError::Session {
        host: host.to_owned(),
        message: e.to_string(),
    };
    ch.send_eof().map_err(|e| err(&e))?;
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

/// Output of one step kept for the report: its last bytes (a hook may print without end).
const KEEP_OUTPUT: usize = 64 * 1024;

/// How much a step read line by line ([`Shell::run_lines`]) may send: in all, and in one line.
#[derive(Debug, Clone, Copy)]
pub struct LineLimits {
    pub total: u64,
    pub line: usize,
}

impl Shell {
    /// Runs `script` in a subshell (so `exit` and `cd` stay inside it) with stdin from
    /// /dev/null and stderr merged into stdout. `deadline`: the most the whole script may take
    /// (None: the default wait for each read). Only the last `KEEP_OUTPUT` bytes of output are
    /// kept; what was dropped is counted at the top.
    pub fn run(&mut self, script: &str, deadline: Option<Duration>) -> Result<Output, SshError> {
        let mut buf = Vec::with_capacity(4096);
        let mut dropped = 0usize;
        let status = self.exchange(script, deadline, &mut |chunk| {
            buf.extend_from_slice(chunk);
            if buf.len() > 2 * KEEP_OUTPUT {
                let cut = buf.len() - KEEP_OUTPUT;
                buf.drain(..cut);
                dropped += cut;
            }
            Ok(())
        })?;
        let mut stdout = String::from_utf8_lossy(&buf).into_owned();
        if dropped > 0 {
            stdout.insert_str(0, &format!("[{dropped} bytes of output dropped]\n"));
        }
        Ok(Output {
            status,
            stdout,
            stderr: String::new(),
        })
    }

    /// Runs `script` as [`Shell::run`] does, but hands every line of its output (without its
    /// newline) to `on_line` as it arrives, and keeps none: what the deployer decides from is
    /// read whole, however long, in bounded memory. More than `limits` allow fails the step,
    /// naming the host. Returns the script's exit status.
    pub fn run_lines(
        &mut self,
        script: &str,
        deadline: Option<Duration>,
        limits: LineLimits,
        on_line: &mut dyn FnMut(&[u8]),
    ) -> Result<i32, SshError> {
        let host = self.host.clone();
        let too_much = |what: String| SshError::Session {
            host: host.clone(),
            message: format!(
                "its answer is too large to read whole ({what}); nothing was decided from it"
            ),
        };
        let mut lines = Lines::new(limits);
        let status = self.exchange(script, deadline, &mut |chunk| {
            lines.feed(chunk, on_line).map_err(&too_much)
        })?;
        lines.finish(on_line);
        Ok(status)
    }

    /// Sends `script` wrapped (see [`Shell::run`]) and hands its output to `sink` chunk by chunk,
    /// up to the marker line, which is never handed on; returns the script's exit status.
    fn exchange(
        &mut self,
        script: &str,
        deadline: Option<Duration>,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), SshError>,
    ) -> Result<i32, SshError> {
        let lost = |host: &str, what: &str, e: &dyn std::fmt::Display| SshError::Session {
            host: host.to_owned(),
            message: format!("connection lost while {what}: {e}"),
        };
        let ends = deadline.map(|d| std::time::Instant::now() + d);
        let wrapped = format!(
            "(\n{script}\n) </dev/null 2>&1; printf '\\n{m} %s\\n' \"$?\"\n",
            m = self.marker
        );
        self.session
            .set_timeout(u32::try_from(self.default_timeout.as_millis()).unwrap_or(u32::MAX));
        self.channel
            .write_all(wrapped.as_bytes())
            .and_then(|()| self.channel.flush())
            .map_err(|e| lost(&self.host, "sending a command", &e))?;
        // The marker line may arrive split across reads: hold back what could be its start.
        let mut tail: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 16384];
        let status = loop {
            self.limit_read(ends, deadline)
                .map_err(|m| lost(&self.host, "waiting for a command", &m))?;
            let n = self
                .channel
                .read(&mut chunk)
                .map_err(|e| lost(&self.host, "waiting for a command", &e))?;
            if n == 0 {
                return Err(lost(
                    &self.host,
                    "waiting for a command",
                    &"the remote shell ended",
                ));
            }
            tail.extend_from_slice(&chunk[..n]);
            if let Some((at, status)) = self.last_line_marker(&tail) {
                sink(&tail[..at])?;
                break status;
            }
            // The marker line starts after a newline and ends the output: everything before
            // the last newline can be handed on, and so can a last line already too long to
            // be the marker (a hook printing without newlines).
            let line_start = tail.iter().rposition(|&b| b == b'\n').unwrap_or(0);
            let cut = if tail.len() - line_start > self.marker.len() + 32 {
                tail.len()
            } else {
                line_start
            };
            sink(&tail[..cut])?;
            tail.drain(..cut);
        };
        self.session
            .set_timeout(u32::try_from(self.default_timeout.as_millis()).unwrap_or(u32::MAX));
        Ok(status)
    }

    /// Gives the next read what is left until `ends` (the command's `deadline` from when it was
    /// sent); an error once nothing is left.
    fn limit_read(
        &self,
        ends: Option<std::time::Instant>,
        deadline: Option<Duration>,
    ) -> Result<(), String> {
        let Some(ends) = ends else {
            return Ok(());
        };
        let left = ends.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no end within {}",
                humantime::format_duration(deadline.unwrap_or_default())
            ));
        }
        self.session
            .set_timeout(u32::try_from(left.as_millis().max(1)).unwrap_or(u32::MAX));
        Ok(())
    }
}

impl Shell {
    /// When `buf` ends with the marker line `\n<marker> <status>\n`: where it starts, and the status.
    fn last_line_marker(&self, buf: &[u8]) -> Option<(usize, i32)> {
        let body = buf.strip_suffix(b"\n")?;
        let start = body.iter().rposition(|&b| b == b'\n')?;
        let line = std::str::from_utf8(&body[start + 1..]).ok()?;
        let status = line.strip_prefix(self.marker.as_str())?.strip_prefix(' ')?;
        Some((start, status.parse().unwrap_or(-1)))
    }
}

/// A permit to log in to jump hosts; at most [`JumpLogins::MAX`] are held at once.
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

/// The SSH handshake over `link`, the host key checked as `host:port`, then `user`
/// authenticated. Also returns a duplicate of the socket, for a tunnel to poll.
/// The least time between two keepalives on one connection.
pub const KEEPALIVE_SECS: u32 = 15;

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
    let key = crate::known_hosts::HostKey {
        blob: key,
        kind: key_type,
    };
    let system = Path::new(crate::known_hosts::SYSTEM);
    let checked = crate::known_hosts::check(session, &[path, system], host, port, &key)
        .map_err(|e| session_err(e.to_string()))?;
    let verdict = match checked {
        Verdict::Unknown if s.policy == HostKeyPolicy::AcceptNew => {
            crate::known_hosts::add(session, path, host, port, &key)
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

#[cfg(test)]
mod tests {
    #[test]
    fn lines_are_read_whole_up_to_each_limit_and_refused_past_it() {
        let limits = super::LineLimits { total: 20, line: 4 };
        let read = |chunks: &[&[u8]]| {
            let mut lines = super::Lines::new(limits);
            let mut got: Vec<Vec<u8>> = Vec::new();
            for c in chunks {
                lines.feed(c, &mut |l| got.push(l.to_vec()))?;
            }
            lines.finish(&mut |l| got.push(l.to_vec()));
            Ok::<_, String>(got)
        };
        // Lines of exactly 4 bytes, split across chunks, and a last one without its newline.
        assert_eq!(
            read(&[b"abcd\nef", b"gh\nij"]),
            Ok(vec![b"abcd".to_vec(), b"efgh".to_vec(), b"ij".to_vec()])
        );
        // 5 bytes: one over, whether it arrives whole or in pieces.
        assert!(read(&[b"abcde\n"]).is_err_and(|e| e.contains("a line over 4 bytes")));
        assert!(read(&[b"abc", b"de"]).is_err_and(|e| e.contains("a line over 4")));
        // 20 bytes in all is read; 21 is not.
        assert!(read(&[b"abc\nabc\nabc\nabc\nabc\n"]).is_ok());
        assert!(read(&[b"abc\nabc\nabc\nabc\nabc\na"]).is_err_and(|e| e.contains("over 20 bytes")));
    }

    #[test]
    fn quoting() {
        assert_eq!(super::quote("/srv/a b"), "'/srv/a b'");
        assert_eq!(super::quote("it's"), r"'it'\''s'");
        assert_eq!(super::quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }
}
