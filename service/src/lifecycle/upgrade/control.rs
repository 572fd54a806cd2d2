//! The running server's end of an upgrade: the control socket beside the pid file, answered
//! only for this user and root, one upgrade at a time, and the handover: start the new server
//! with a duplicate of the listening socket, wait until it serves, then tell this one to stop.

use super::IN_PROGRESS;
use super::spawn::{await_ready, last_words, new_server_command, spawn_with_channel, stderr_file};
use crate::lifecycle::pidfile;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

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
