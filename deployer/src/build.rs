//! The local build command (`build` in deploy.toml), run in the config file's directory before
//! anything is hashed or sent. It may take many minutes, so it is never silent: its output
//! reaches the caller line by line as it is written (stdout and stderr in the order they
//! arrive; shown with `-v`), and the caller is called back a few times a second while it runs
//! (to keep the locked hosts' connections alive and a spinner turning). It runs in a process
//! group of its own: a Ctrl-C reaches the deployer, which stops the whole build.

use crate::config::Config;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The build command exited non-zero, was stopped, or could not run: its last lines.
#[derive(Debug, thiserror::Error)]
#[error("the build command {command:?} failed: {message}")]
pub struct BuildFailed {
    pub command: String,
    pub message: String,
}

/// What watches a build while it runs.
pub struct Watch<'a> {
    /// Every line of output, as it is written (lines past 64 KiB are cut there).
    pub on_line: &'a mut dyn FnMut(&str),
    /// Called about ten times a second while the build runs.
    pub tick: &'a mut dyn FnMut(),
    /// Set (by a signal): the build is stopped, with all it started.
    pub stop: &'a AtomicBool,
}

/// How many of the last lines a failure quotes.
const TAIL_LINES: usize = 8;
/// The longest line passed on whole.
const MAX_LINE: u64 = 64 * 1024;

/// Runs the build command, if the config has one.
pub fn run(cfg: &Config, watch: Watch) -> Result<(), BuildFailed> {
    let Some(command) = &cfg.build else {
        return Ok(());
    };
    let failed = |message: String| BuildFailed {
        command: command.clone(),
        message,
    };
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(&cfg.base)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| failed(format!("cannot start sh: {e}")))?;
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        forward_lines(out, tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        forward_lines(err, tx);
    }
    let ended = follow(&mut child, &rx, watch);
    let said = Vec::from(ended.tail).join("\n");
    match ended.status {
        Some(_) if ended.stopped => Err(failed("stopped by a signal".into())),
        Some(status) if status.success() => Ok(()),
        Some(status) if said.is_empty() => Err(failed(status.to_string())),
        Some(_) => Err(failed(format!("…\n{said}"))),
        None => Err(failed("lost track of the build process".into())),
    }
}

/// How a build ended: its status (`None`: unknown), whether it was stopped, its last lines.
struct Ended {
    status: Option<std::process::ExitStatus>,
    stopped: bool,
    tail: VecDeque<String>,
}

/// Passes the build's lines on and ticks until it has exited and its output is read.
fn follow(child: &mut Child, lines: &mpsc::Receiver<String>, watch: Watch) -> Ended {
    let mut ended = Ended {
        status: None,
        stopped: false,
        tail: VecDeque::with_capacity(TAIL_LINES),
    };
    let mut exited_at: Option<Instant> = None;
    loop {
        match lines.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                (watch.on_line)(&line);
                if ended.tail.len() == TAIL_LINES {
                    ended.tail.pop_front();
                }
                ended.tail.push_back(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) if exited_at.is_some() => break,
            Err(_) => {}
        }
        (watch.tick)();
        if exited_at.is_none() {
            if watch.stop.load(Ordering::Relaxed) && !ended.stopped {
                stop_group(child);
                ended.stopped = true;
            }
            match child.try_wait() {
                Ok(Some(status)) => {
                    ended.status = Some(status);
                    exited_at = Some(Instant::now());
                }
                Ok(None) => {}
                Err(_) => break,
            }
        }
        // Something it left running may hold the pipes open: wait for it a moment, not forever.
        if exited_at.is_some_and(|at| at.elapsed() > Duration::from_secs(1)) {
            break;
        }
    }
    ended
}

/// Reads `from` line by line on a thread of its own, sending each line (cut at [`MAX_LINE`],
/// decoded lossily, without its newline) to `to`.
fn forward_lines(from: impl Read + Send + 'static, to: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(buf.strip_suffix(b"\n").unwrap_or(&buf));
            if to.send(line.trim_end_matches('\r').to_owned()).is_err() {
                return;
            }
        }
    });
}

/// SIGTERM to the build's process group: `make` passes it on and removes half-made targets.
fn stop_group(child: &Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}
