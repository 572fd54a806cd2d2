//! Running a plugin as a monitoring core does: its stdout read (bounded), its exit status mapped
//! to a state, and a timeout past which it is killed, with its whole process group, and reported
//! CRITICAL "plugin timed out after …", as Nagios does.

use crate::perfdata::{PerfValue, parse_perfdata};
use crate::state::State;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Plugin output past this is not read (Nagios keeps far less).
const MAX_OUTPUT: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no plugin command given")]
    Empty,
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// What a plugin run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginRun {
    pub state: State,
    /// The exit status; `None` when killed (a timeout, a signal).
    pub code: Option<i32>,
    /// The first line before any `|`, trimmed.
    pub first_line: String,
    pub output: String,
    /// Perfdata from the first line and from later lines after a `|`.
    pub perfdata: Vec<PerfValue>,
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
pub fn run(mut cmd: Command, timeout: Duration) -> Result<PluginRun, RunError> {
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
            let mut s = Vec::new();
            let _ = out.take(MAX_OUTPUT).read_to_end(&mut s);
            let _ = tx.send(String::from_utf8_lossy(&s).into_owned());
        });
    }
    let deadline = Instant::now() + timeout;
    let code = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status.code()),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) | Err(_) => {
                if let Ok(pid) = i32::try_from(child.id()) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let _ = child.kill();
                let _ = child.wait();
                break Err(());
            }
        }
    };
    // Something it left running may still hold the pipe: do not wait for it forever.
    let output = rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    let Ok(code) = code else {
        return Ok(PluginRun {
            state: State::Critical,
            code: None,
            first_line: format!("plugin timed out after {}s", timeout.as_secs_f64()),
            output,
            perfdata: Vec::new(),
            timed_out: true,
        });
    };
    let mut lines = output.lines();
    let first = lines.next().unwrap_or("");
    let (first_line, mut perf_text) = match first.split_once('|') {
        Some((text, perf)) => (text.trim().to_owned(), perf.to_owned()),
        None => (first.trim().to_owned(), String::new()),
    };
    // Guidelines: long output may carry more perfdata after a '|' on a later line.
    for line in lines {
        if let Some((_, perf)) = line.split_once('|') {
            perf_text.push(' ');
            perf_text.push_str(perf);
        }
    }
    Ok(PluginRun {
        state: State::from_exit(code),
        code,
        first_line,
        perfdata: parse_perfdata(&perf_text),
        output,
        timed_out: false,
    })
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
