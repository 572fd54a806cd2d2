//! Zero-downtime upgrade. The serving process listens on a control socket beside its pid file;
//! `usersvc upgrade` asks it to start a new server from the path it was itself started through
//! (argv[0] as given, so `current/bin/usersvc` means the release `current` points to now) and
//! hands it the listening socket: one socket, one accept queue, nothing dropped. The new server
//! opens the store, loads its snapshot, starts accepting and says READY; only then does the old
//! one stop accepting, drain (`server.rs`) and exit. A new server that fails or is not ready in
//! time is killed and the old one never stopped serving.
//!
//! Control protocol (one line each way): `upgrade <timeout ms>` → `ok <new pid>` or
//! `error <message>`.

use super::listener::{ERROR, HTTP_FD_NAME, READY, UPGRADE_FD_NAME};
use super::pidfile;
use crate::setting_paths;
use command_fds::{CommandFdExt, FdMapping};
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(
        "upgrade needs a pid file to find the running server: set pid_file in the config file or pass --pid-file"
    )]
    NoPidFile,
    #[error(
        "usersvc is not running (no live pid in {0}): start it, or run `usersvc upgrade --start`"
    )]
    NotRunning(PathBuf),
    #[error("cannot read {path}: {source}")]
    PidFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the running server (pid {pid}) does not answer on {path}: {source}")]
    Control {
        pid: u32,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("upgrade refused: {0}")]
    Refused(String),
    #[error("the new server failed, the old one keeps serving: {0}")]
    NewServer(String),
    #[error("the server did not start: {0}")]
    Start(String),
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// What `usersvc upgrade` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgraded {
    Replaced { old: u32, new: u32 },
    Started { pid: u32 },
}

impl std::fmt::Display for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upgraded::Replaced { old, new } => write!(f, "usersvc upgraded: pid {old} -> {new}"),
            Upgraded::Started { pid } => write!(f, "usersvc started: pid {pid}"),
        }
    }
}

/// `usersvc upgrade`: replace the running server, or with `start` start one when none runs.
pub async fn upgrade(
    pid_file: Option<&Path>,
    start: bool,
    timeout: Duration,
) -> Result<Upgraded, UpgradeError> {
    let pid_file = pid_file.ok_or(UpgradeError::NoPidFile)?;
    let running = pidfile::read_live(pid_file).map_err(|source| UpgradeError::PidFile {
        path: pid_file.to_owned(),
        source,
    })?;
    match running {
        Some(pid) => replace(pid_file, pid, timeout).await,
        None if start => start_detached(pid_file, timeout).await,
        None => Err(UpgradeError::NotRunning(pid_file.to_owned())),
    }
}

async fn replace(pid_file: &Path, pid: u32, timeout: Duration) -> Result<Upgraded, UpgradeError> {
    let path = pidfile::control_path(pid_file);
    let control_err = |source| UpgradeError::Control {
        pid,
        path: path.clone(),
        source,
    };
    let mut stream = tokio::net::UnixStream::connect(&path)
        .await
        .map_err(control_err)?;
    stream
        .write_all(format!("upgrade {}\n", timeout.as_millis()).as_bytes())
        .await
        .map_err(control_err)?;
    let mut line = String::new();
    // The server bounds the wait by `timeout`; a little more here for the kill and the answer.
    let mut reader = BufReader::new(stream);
    let read = reader.read_line(&mut line);
    match tokio::time::timeout(timeout.saturating_add(Duration::from_secs(10)), read).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(control_err(e)),
        Err(_) => {
            return Err(control_err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer",
            )));
        }
    }
    let line = line.trim();
    if let Some(new) = line.strip_prefix("ok ") {
        let new = new.parse().map_err(|_| {
            UpgradeError::Refused(format!("unexpected answer from pid {pid}: {line}"))
        })?;
        return Ok(Upgraded::Replaced { old: pid, new });
    }
    match line.strip_prefix("error ") {
        Some(m) if m.starts_with(IN_PROGRESS) => Err(UpgradeError::Refused(m.to_owned())),
        Some(m) => Err(UpgradeError::NewServer(m.to_owned())),
        None if line.is_empty() => Err(UpgradeError::Refused(format!(
            "pid {pid} closed the control connection without an answer"
        ))),
        None => Err(UpgradeError::Refused(format!(
            "unexpected answer from pid {pid}: {line}"
        ))),
    }
}

const IN_PROGRESS: &str = "an upgrade is already in progress";

/// Starts a server that outlives this process (and the SSH session it runs in): its own process
/// group, stdin and stdout on /dev/null, its log appended beside the pid file.
async fn start_detached(pid_file: &Path, timeout: Duration) -> Result<Upgraded, UpgradeError> {
    let log = pidfile::log_path(pid_file);
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| UpgradeError::Start(format!("cannot open its log {}: {e}", log.display())))?;
    let from = stderr.metadata().map_or(0, |m| m.len());
    let (program, args) = serve_args_from_upgrade(std::env::args_os());
    let mut cmd = new_server_command(&program, &args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0);
    let (mut child, channel) = spawn_with_channel(cmd, &program, None)?;
    let pid = child.id().unwrap_or_default();
    await_ready(&mut child, channel, timeout)
        .await
        .map_err(|e| {
            let said = last_words(&log, from)
                .map(|w| format!("; it said: {w}"))
                .unwrap_or_default();
            UpgradeError::Start(format!("{e}{said} (its log: {})", log.display()))
        })?;
    Ok(Upgraded::Started { pid })
}

/// argv[0] as given, and this invocation's arguments with `upgrade` and its own options replaced
/// by `serve`: the global options (`--config`, `--listen`, …) are the new server's.
fn serve_args_from_upgrade(mut argv: impl Iterator<Item = OsString>) -> (OsString, Vec<OsString>) {
    let program = argv.next().unwrap_or_else(|| "usersvc".into());
    let mut args = Vec::new();
    let mut seen_upgrade = false;
    let mut skip_value = false;
    for a in argv {
        if skip_value {
            skip_value = false;
            continue;
        }
        if !seen_upgrade && a == "upgrade" {
            seen_upgrade = true;
            continue;
        }
        if seen_upgrade {
            if a == "--start" || a.to_string_lossy().starts_with("--timeout=") {
                continue;
            }
            if a == "--timeout" {
                skip_value = true;
                continue;
            }
        }
        args.push(a);
    }
    args.push("serve".into());
    (program, args)
}

/// A path setting's value (`setting_paths::PATH_KEYS`) made absolute against `base`.
fn anchored(key: &str, value: &std::ffi::OsStr, base: &Path) -> OsString {
    match value.to_str() {
        Some(text) => setting_paths::anchor_value(key, text, base).into(),
        None => setting_paths::anchor(Path::new(value), base).into_os_string(),
    }
}

/// `args` with every path option's value absolute against `base` (`--opt value` and
/// `--opt=value` alike): the new server runs elsewhere (`new_server_command`).
fn absolute_args(args: &[OsString], base: &Path) -> Vec<OsString> {
    let flags: Vec<(&str, String)> = setting_paths::PATH_KEYS
        .iter()
        .map(|key| (*key, setting_paths::flag_of(key)))
        .collect();
    let mut out = Vec::with_capacity(args.len());
    let mut pending: Option<&str> = None;
    for a in args {
        if let Some(key) = pending.take() {
            out.push(anchored(key, a, base));
            continue;
        }
        let text = a.to_string_lossy();
        match flags.iter().find_map(|(key, flag)| {
            if text == *flag {
                Some((*key, flag, None))
            } else {
                text.strip_prefix(flag.as_str())?
                    .strip_prefix('=')
                    .map(|v| (*key, flag, Some(v.to_owned())))
            }
        }) {
            Some((key, _, None)) => {
                pending = Some(key);
                out.push(a.clone());
            }
            Some((key, flag, Some(value))) => {
                let mut joined = OsString::from(format!("{flag}="));
                joined.push(anchored(key, value.as_ref(), base));
                out.push(joined);
            }
            None => out.push(a.clone()),
        }
    }
    out
}

/// The new server's command. Its program and path options are made absolute against this
/// process's directory, and it runs from the config file's directory when there is one: never
/// from a release directory that cleanup will remove (without a config file, from this
/// process's directory, where its defaults live).
fn new_server_command(program: &OsString, args: &[OsString]) -> tokio::process::Command {
    let here = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let program_path = Path::new(program);
    let program = if program_path.is_relative() && program_path.components().count() > 1 {
        here.join(program_path).into_os_string()
    } else {
        program.clone()
    };
    let args = absolute_args(args, &here);
    let mut cmd = tokio::process::Command::new(&program);
    for key in setting_paths::PATH_KEYS {
        let var = setting_paths::env_of(key);
        if let Some(value) = std::env::var_os(&var) {
            cmd.env(&var, anchored(key, &value, &here));
        }
    }
    let config = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.to_str()?.strip_prefix("--config=").map(OsString::from))
        })
        .or_else(|| std::env::var_os("USERSVC_CONFIG").map(|v| anchored("config", &v, &here)));
    let dir = config
        .as_deref()
        .and_then(|c| Path::new(c).parent().map(Path::to_path_buf))
        .unwrap_or(here);
    cmd.args(&args)
        .current_dir(dir)
        // listenfd accepts an unset LISTEN_PID; ours (the parent's) would make the child ignore
        // the sockets.
        .env_remove("LISTEN_PID")
        .kill_on_drop(false);
    cmd
}

/// The last lines a failed new server wrote to `log` after `from` (its stderr, when that is a
/// file), for the error: the reason is where the operator reads it.
fn last_words(log: &Path, from: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(log).ok()?;
    let end = f.metadata().ok()?.len();
    let start = from.max(end.saturating_sub(4096));
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut text = String::new();
    f.take(4096).read_to_string(&mut text).ok()?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = &lines[lines.len().saturating_sub(3)..];
    (!tail.is_empty()).then(|| tail.join(" | "))
}

/// Where this process's stderr goes when it is a regular file (a new server inherits it), and
/// its length now.
fn stderr_file() -> Option<(PathBuf, u64)> {
    let path = std::fs::read_link("/proc/self/fd/2").ok()?;
    let meta = std::fs::metadata(&path).ok()?;
    meta.is_file().then_some((path, meta.len()))
}

/// Spawns with `listener` (if any) and the upgrade channel as systemd-style passed fds.
fn spawn_with_channel(
    mut cmd: tokio::process::Command,
    program: &OsString,
    listener: Option<OwnedFd>,
) -> Result<(tokio::process::Child, tokio::net::UnixStream), UpgradeError> {
    let spawn_err = |source| UpgradeError::Spawn {
        program: program.to_string_lossy().into_owned(),
        source,
    };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(spawn_err)?;
    let mut mappings = Vec::new();
    let mut names = Vec::new();
    if let Some(fd) = listener {
        mappings.push(FdMapping {
            parent_fd: fd,
            child_fd: 3,
        });
        names.push(HTTP_FD_NAME);
    }
    mappings.push(FdMapping {
        parent_fd: theirs.into(),
        child_fd: 3 + names.len() as i32,
    });
    names.push(UPGRADE_FD_NAME);
    cmd.env("LISTEN_FDS", names.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"));
    cmd.fd_mappings(mappings)
        .map_err(|e| spawn_err(std::io::Error::other(e)))?;
    let child = cmd.spawn().map_err(spawn_err)?;
    // `cmd` owns the child's ends of the fds: drop it so the channel sees EOF when the child dies.
    drop(cmd);
    ours.set_nonblocking(true).map_err(spawn_err)?;
    let ours = tokio::net::UnixStream::from_std(ours).map_err(spawn_err)?;
    Ok((child, ours))
}

/// Waits for the new server's READY. Anything else (an ERROR line, an exit, the timeout) kills
/// it and returns why.
async fn await_ready(
    child: &mut tokio::process::Child,
    channel: tokio::net::UnixStream,
    timeout: Duration,
) -> Result<tokio::net::UnixStream, String> {
    let mut reader = BufReader::new(channel);
    let mut line = String::new();
    let outcome = tokio::time::timeout(timeout, reader.read_line(&mut line)).await;
    let why = match outcome {
        Ok(Ok(_)) if line.trim() == READY => return Ok(reader.into_inner()),
        Ok(Ok(_)) => match line.trim().strip_prefix(ERROR) {
            Some(msg) => msg.trim().to_owned(),
            None => match child.wait().await {
                Ok(status) => format!("it exited ({status}) before it was ready"),
                Err(e) => format!("it went away before it was ready: {e}"),
            },
        },
        Ok(Err(e)) => format!("lost contact with it: {e}"),
        Err(_) => format!(
            "not ready within {}; killed",
            humantime::format_duration(timeout)
        ),
    };
    let _ = child.start_kill();
    let _ = child.wait().await;
    Err(why)
}

/// The serving side: answers `upgrade` on the control socket.
pub(crate) struct Handoff {
    /// A duplicate of the listening socket, for the new server.
    listener: OwnedFd,
    in_progress: AtomicBool,
    /// Fired once a new server serves: this one then stops accepting.
    done: tokio::sync::Mutex<Option<tokio::sync::oneshot::Sender<Successor>>>,
}

/// The server that took over.
pub(crate) struct Successor {
    pub pid: u32,
}

/// Binds the control socket beside the pid file (a temp name renamed over the old server's: the
/// path always leads to the newest server) and answers on it until the process ends.
pub(crate) fn listen_control(
    pid_file: &Path,
    listener: OwnedFd,
    done: tokio::sync::oneshot::Sender<Successor>,
) -> std::io::Result<()> {
    let path = pidfile::control_path(pid_file);
    let tmp = pidfile::sibling(&path, &format!(".{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let control = tokio::net::UnixListener::bind(&tmp)?;
    // Only its own user may even connect (the umask already says so; this says it whatever
    // the umask was); `trusted` checks every peer anyway.
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    std::fs::rename(&tmp, &path)?;
    let handoff = Arc::new(Handoff {
        listener,
        in_progress: AtomicBool::new(false),
        done: tokio::sync::Mutex::new(Some(done)),
    });
    tokio::spawn(async move {
        loop {
            match control.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, handoff.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

/// The longest command line the control socket reads.
const MAX_COMMAND: u64 = 256;
/// How long the control socket waits for that line: a peer that connects and says nothing does
/// not hold a task forever.
const COMMAND_WAIT: Duration = Duration::from_secs(5);

/// Whether the peer may command this server: its own user, or root.
fn trusted(stream: &tokio::net::UnixStream) -> Result<(), String> {
    let ours = nix::unistd::Uid::effective().as_raw();
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == ours || cred.uid() == 0 => Ok(()),
        Ok(cred) => Err(format!(
            "uid {} (pid {:?}) is neither this server's user (uid {ours}) nor root",
            cred.uid(),
            cred.pid()
        )),
        Err(e) => Err(format!("its credentials cannot be read: {e}")),
    }
}

async fn answer(stream: tokio::net::UnixStream, handoff: Arc<Handoff>) {
    if let Err(why) = trusted(&stream) {
        tracing::warn!(why = %why, "control socket: command refused");
        let mut stream = stream;
        let _ = stream.write_all(b"error not allowed\n").await;
        // Read what it sent (briefly) before closing: closed at once, the peer's own send
        // fails with a broken pipe, and it never reads why it was refused.
        let mut sent = [0u8; MAX_COMMAND as usize];
        let read = tokio::io::AsyncReadExt::read(&mut stream, &mut sent);
        let _ = tokio::time::timeout(Duration::from_secs(1), read).await;
        return;
    }
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut bounded = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_COMMAND));
    let read = tokio::time::timeout(COMMAND_WAIT, bounded.read_line(&mut line)).await;
    if !matches!(read, Ok(Ok(_))) {
        return;
    }
    if !line.ends_with('\n') {
        tracing::warn!(
            bytes = line.len(),
            "control socket: command refused (no complete line within {MAX_COMMAND} bytes)"
        );
        let _ = write.write_all(b"error command too long\n").await;
        return;
    }
    let reply = match line.trim().strip_prefix("upgrade") {
        None => format!("error unknown command {:?}\n", line.trim()),
        Some(ms) => {
            let timeout = Duration::from_millis(ms.trim().parse().unwrap_or(30_000));
            if handoff.in_progress.swap(true, Ordering::SeqCst) {
                format!("error {IN_PROGRESS}\n")
            } else {
                match hand_over(&handoff, timeout).await {
                    Ok(pid) => format!("ok {pid}\n"),
                    Err(e) => {
                        handoff.in_progress.store(false, Ordering::SeqCst);
                        format!("error {}\n", e.replace('\n', " "))
                    }
                }
            }
        }
    };
    let _ = write.write_all(reply.as_bytes()).await;
}

async fn hand_over(handoff: &Handoff, timeout: Duration) -> Result<u32, String> {
    let listener = handoff
        .listener
        .try_clone()
        .map_err(|e| format!("cannot duplicate the listening socket: {e}"))?;
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let program = if args.is_empty() {
        "usersvc".into()
    } else {
        args.remove(0)
    };
    tracing::info!(program = %program.to_string_lossy(), "upgrade: starting the new server");
    let cmd = new_server_command(&program, &args);
    let stderr = stderr_file();
    let (mut child, channel) =
        spawn_with_channel(cmd, &program, Some(listener)).map_err(|e| e.to_string())?;
    let pid = child.id().unwrap_or_default();
    match await_ready(&mut child, channel, timeout).await {
        Ok(_channel) => {
            tracing::info!(new_pid = pid, "upgrade: the new server is ready; draining");
            // Under systemd the new server becomes the main process before this one exits (else
            // systemd would stop the service, the new server included).
            if std::env::var_os("NOTIFY_SOCKET").is_some()
                && let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::MainPid(pid)])
            {
                tracing::warn!(error = %e, "cannot tell systemd the new main pid");
            }
            if let Some(tx) = handoff.done.lock().await.take() {
                let _ = tx.send(Successor { pid });
            }
            // It now runs on its own: reaped by init once this process is gone.
            drop(child);
            Ok(pid)
        }
        Err(why) => {
            // Its stderr is ours: when that is a file, its last lines say why.
            let said = stderr
                .and_then(|(log, from)| last_words(&log, from))
                .map(|w| format!("; it said: {w}"))
                .unwrap_or_default();
            let why = format!("{why}{said}");
            tracing::error!(error = %why, "upgrade failed; still serving");
            Err(why)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn path_options_are_made_absolute() {
        let base = Path::new("/srv/u/releases/1");
        assert_eq!(
            absolute_args(
                &args(&[
                    "--config",
                    "../../shared/usersvc.toml",
                    "--journal=j",
                    "--pid-file",
                    "/run/u.pid",
                    "--database-url",
                    "sqlite://u.db",
                    "--listen",
                    "127.0.0.1:1",
                ]),
                base
            ),
            args(&[
                "--config",
                "/srv/u/releases/1/../../shared/usersvc.toml",
                "--journal=/srv/u/releases/1/j",
                "--pid-file",
                "/run/u.pid",
                "--database-url",
                "sqlite:///srv/u/releases/1/u.db",
                "--listen",
                "127.0.0.1:1",
            ])
        );
    }

    #[test]
    fn start_turns_upgrade_into_serve() {
        let (program, rest) = serve_args_from_upgrade(
            args(&[
                "/srv/u/current/bin/usersvc",
                "--config",
                "/srv/u/shared/usersvc.toml",
                "upgrade",
                "--start",
                "--timeout",
                "5s",
                "--listen",
                "127.0.0.1:1",
            ])
            .into_iter(),
        );
        assert_eq!(program, "/srv/u/current/bin/usersvc");
        assert_eq!(
            rest,
            args(&[
                "--config",
                "/srv/u/shared/usersvc.toml",
                "--listen",
                "127.0.0.1:1",
                "serve"
            ])
        );
        let (_, rest) =
            serve_args_from_upgrade(args(&["usersvc", "upgrade", "--timeout=3s"]).into_iter());
        assert_eq!(rest, args(&["serve"]));
        // What the new server gets parses as `serve` with the same settings.
        let (_, rest) = serve_args_from_upgrade(
            args(&["usersvc", "upgrade", "--start", "--metrics-public"]).into_iter(),
        );
        let new = crate::Invocation::try_parse_from(args(&["usersvc"]).into_iter().chain(rest))
            .expect("the new server's arguments parse");
        assert!(matches!(new.command, crate::Command::Serve));
        assert!(new.settings().expect("valid").api.metrics_public);
    }
}
