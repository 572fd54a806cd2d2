//! `usersvc upgrade`'s end: ask the running server (over its control socket) to hand over to a
//! new one, or with `--start` start one detached when none runs.

use super::spawn::{
    await_ready, last_words, new_server_command, serve_args_from_upgrade, spawn_with_channel,
};
use super::{IN_PROGRESS, UpgradeError, Upgraded};
use crate::lifecycle::pidfile;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

pub(super) async fn replace(
    pid_file: &Path,
    pid: u32,
    timeout: Duration,
) -> Result<Upgraded, UpgradeError> {
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

/// Starts a server that outlives this process (and the SSH session it runs in): its own process
/// group, stdin and stdout on /dev/null, its log appended beside the pid file.
pub(super) async fn start_detached(
    pid_file: &Path,
    timeout: Duration,
) -> Result<Upgraded, UpgradeError> {
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
