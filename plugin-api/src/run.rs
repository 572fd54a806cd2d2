//! Running a plugin as a monitoring core does: its stdout read (bounded), its exit status mapped
//! to a state, and a timeout past which it is killed, with its whole process group, and reported
//! CRITICAL "plugin timed out after …", as Nagios does.

use crate::perfdata::{PerfValue, parse_perfdata};
use crate::state::State;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Plugin output past this is not read (Nagios keeps far less).
const MAX_OUTPUT: u64 = 1024 * 1024;

/// Why a plugin could not be started (one that started and failed is a [`PluginRun`]).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The argument vector was empty.
    #[error("no plugin command given")]
    Empty,
    /// The program could not be spawned (not found, not executable, …).
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program as given.
        program: String,
        /// The error from spawning it.
        #[source]
        source: std::io::Error,
    },
}

/// What a plugin run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginRun {
    /// The state its exit status means; CRITICAL on a timeout, UNKNOWN when aborted.
    pub state: State,
    /// The exit status; `None` when killed (a timeout, a signal).
    pub code: Option<i32>,
    /// The first line before any `|`, trimmed.
    pub first_line: String,
    /// Its stdout, decoded lossily as UTF-8, at most 1 MiB of it (which end: [`Keep`]).
    pub output: String,
    /// Perfdata from the first line and from later lines after a `|`.
    pub perfdata: Vec<PerfValue>,
    /// Whether it was killed for running past its timeout.
    pub timed_out: bool,
}

/// Runs `argv` (program and arguments).
pub fn run_argv(argv: &[String], timeout: Duration) -> Result<PluginRun, RunError> {
    let (program, args) = argv.split_first().ok_or(RunError::Empty)?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    run(cmd, timeout)
}

/// Runs `command` with `sh -c`, as cores run command lines.
pub fn run_shell(command: &str, timeout: Duration) -> Result<PluginRun, RunError> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command);
    run(cmd, timeout)
}

/// Runs `cmd` with stdin closed, stdout read, stderr discarded, killed after `timeout`.
pub fn run(cmd: Command, timeout: Duration) -> Result<PluginRun, RunError> {
    run_with(cmd, timeout, Keep::Head, None)
}

/// Which part of a long output is kept (1 MiB); the rest is read and dropped,
/// so the program never blocks or dies on a full pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The beginning: a plugin's first line is its status.
    Head,
    /// The end: a build or hook says why it failed last.
    Tail,
}

/// [`run`], keeping `keep` of the output, and killing the program (with its process group)
/// as soon as `abort` is set, as a timeout does.
pub fn run_with(
    mut cmd: Command,
    timeout: Duration,
    keep: Keep,
    abort: Option<&AtomicBool>,
) -> Result<PluginRun, RunError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own group, so a timeout kills what it started too (their stdout is ours).
        .process_group(0)
        .spawn()
        .map_err(|source| RunError::Spawn { program, source })?;
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            let _ = tx.send(read_output(out, keep));
        });
    }
    let stop = || abort.is_some_and(|a| a.load(Ordering::Relaxed));
    let code = wait_or_kill(&mut child, Instant::now() + timeout, &stop);
    // Something it left running may still hold the pipe: do not wait for it forever.
    let output = rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    // Killed: no exit code to judge by.
    let ended = |state, first_line, timed_out, output| PluginRun {
        state,
        code: None,
        first_line,
        output,
        perfdata: Vec::new(),
        timed_out,
    };
    Ok(match code {
        Some(code) => interpret(code, output),
        None if stop() => ended(State::Unknown, "interrupted".into(), false, output),
        None => {
            let why = format!("plugin timed out after {}s", timeout.as_secs_f64());
            ended(State::Critical, why, true, output)
        }
    })
}

/// The plugin's stdout to its end, at most [`MAX_OUTPUT`] bytes of it as `keep` says; the rest
/// is read and dropped, so a chatty plugin never dies of a closed pipe.
fn read_output(mut out: impl Read, keep: Keep) -> String {
    let max = usize::try_from(MAX_OUTPUT).unwrap_or(usize::MAX);
    let mut kept = Vec::new();
    let mut chunk = [0u8; 16384];
    while let Ok(n) = out.read(&mut chunk) {
        if n == 0 {
            break;
        }
        match keep {
            Keep::Head => {
                let room = max.saturating_sub(kept.len()).min(n);
                kept.extend_from_slice(&chunk[..room]);
            }
            Keep::Tail => {
                kept.extend_from_slice(&chunk[..n]);
                if kept.len() > 2 * max {
                    kept.drain(..kept.len() - max);
                }
            }
        }
    }
    if keep == Keep::Tail && kept.len() > max {
        kept.drain(..kept.len() - max);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// Its exit code (`Some(None)`: killed by a signal), or `None` once it was killed with its
/// group: past the deadline, or told to stop.
fn wait_or_kill(
    child: &mut std::process::Child,
    deadline: Instant,
    stop: &dyn Fn() -> bool,
) -> Option<Option<i32>> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status.code()),
            Ok(None) if Instant::now() < deadline && !stop() => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Ok(None) | Err(_) => {
                if let Ok(pid) = i32::try_from(child.id()) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// A finished plugin's verdict: its exit code's state, its first line without perfdata, and
/// the perfdata of every line (the guidelines let long output carry more after a `|`).
fn interpret(code: Option<i32>, output: String) -> PluginRun {
    let mut lines = output.lines();
    let first = lines.next().unwrap_or("");
    let (first_line, mut perf_text) = match first.split_once('|') {
        Some((text, perf)) => (text.trim().to_owned(), perf.to_owned()),
        None => (first.trim().to_owned(), String::new()),
    };
    for line in lines {
        if let Some((_, perf)) = line.split_once('|') {
            perf_text.push(' ');
            perf_text.push_str(perf);
        }
    }
    PluginRun {
        state: State::from_exit(code),
        code,
        first_line,
        perfdata: parse_perfdata(&perf_text),
        output,
        timed_out: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_output_and_perfdata() {
        let r = run_shell(
            "echo 'DISK WARNING - 91% | used=91%;90;95'; echo more; exit 1",
            Duration::from_secs(10),
        )
        .expect("runs");
        assert_eq!(
            (r.state, r.code, r.first_line.as_str(), r.timed_out),
            (State::Warning, Some(1), "DISK WARNING - 91%", false)
        );
        assert_eq!(r.perfdata[0].label, "used");
        assert_eq!(
            run_shell("exit 5", Duration::from_secs(10))
                .expect("runs")
                .state,
            State::Unknown
        );
        assert!(matches!(
            run_argv(&["/nonexistent/plugin".into()], Duration::from_secs(1)),
            Err(RunError::Spawn { .. })
        ));
        assert!(matches!(
            run_argv(&[], Duration::from_secs(1)),
            Err(RunError::Empty)
        ));
    }

    #[test]
    fn long_output_is_drained_and_the_chosen_end_kept() {
        // 3 MiB: a reader that stopped at the cap would kill the writer with SIGPIPE.
        let script = "head -c 3145728 /dev/zero | tr '\\0' x; echo; echo the end";
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        let tail = run_with(cmd, Duration::from_secs(20), Keep::Tail, None).expect("runs");
        assert_eq!(tail.code, Some(0));
        assert!(tail.output.ends_with("x\nthe end\n"));
        assert_eq!(tail.output.len() as u64, MAX_OUTPUT);
        let head = run_shell(script, Duration::from_secs(20)).expect("runs");
        assert_eq!(head.code, Some(0), "the writer was never cut off");
        assert!(head.output.starts_with("xxx") && head.output.len() as u64 == MAX_OUTPUT);
        let abort = AtomicBool::new(true);
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let started = Instant::now();
        let r = run_with(cmd, Duration::from_secs(60), Keep::Tail, Some(&abort)).expect("runs");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!((r.code, r.first_line.as_str()), (None, "interrupted"));
    }

    #[test]
    fn a_hung_plugin_is_killed_with_what_it_started() {
        let started = Instant::now();
        // The background sleep holds stdout too: the group kill must take it down.
        let r = run_shell("sleep 30 & sleep 30", Duration::from_millis(300)).expect("runs");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(r.state, State::Critical);
        assert!(r.timed_out);
        assert_eq!(r.first_line, "plugin timed out after 0.3s");
    }
}
