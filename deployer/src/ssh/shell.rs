//! The long-lived `sh` on a host that every remote step runs in, and the output of a command
//! on a channel of its own. A step's output is read as it arrives: a hook's last 64 KiB kept
//! (`run`), or what the deployer decides from streamed line by line, whole or failing
//! (`run_lines`).

use super::SshError;
use std::io::{Read, Write};
use std::time::Duration;

/// The output of one remote command.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
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

impl Shell {
    pub(super) fn new(
        host: String,
        channel: ssh2::Channel,
        session: ssh2::Session,
        marker: String,
        default_timeout: Duration,
    ) -> Self {
        Self {
            host,
            channel,
            session,
            marker,
            default_timeout,
        }
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
        self.send(script)?;
        // The marker line may arrive split across reads: hold back what could be its start.
        let mut tail: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 16384];
        let status = loop {
            self.limit_read(ends, deadline)
                .map_err(|m| lost(&self.host, "waiting for a command", &m))?;
            let n = self.channel.read(&mut chunk).map_err(|e| {
                self.give_up(&e);
                lost(&self.host, "waiting for a command", &e)
            })?;
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

    /// Sends `script`, wrapped so that its exit status follows its output after the marker.
    fn send(&mut self, script: &str) -> Result<(), SshError> {
        super::count_command();
        let wrapped = format!(
            "(\n{script}\n) </dev/null 2>&1; printf '\\n{m} %s\\n' \"$?\"\n",
            m = self.marker
        );
        self.session
            .set_timeout(u32::try_from(self.default_timeout.as_millis()).unwrap_or(u32::MAX));
        self.channel
            .write_all(wrapped.as_bytes())
            .and_then(|()| self.channel.flush())
            .map_err(|e| {
                self.give_up(&e);
                SshError::Session {
                    host: self.host.clone(),
                    message: format!("connection lost while sending a command: {e}"),
                }
            })
    }

    /// A failed read or write: see `give_up_after`. The session's timeout goes back to the
    /// default (a deadline may have shortened it), for whatever still runs on it.
    fn give_up(&self, e: &std::io::Error) {
        self.session
            .set_timeout(u32::try_from(self.default_timeout.as_millis()).unwrap_or(u32::MAX));
        super::give_up_after(&self.session, e);
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
            self.session
                .set_timeout(u32::try_from(self.default_timeout.as_millis()).unwrap_or(u32::MAX));
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
    /// When `buf` ends with the marker line `\n<marker> <status>\n`: where it starts, and the
    /// status.
    fn last_line_marker(&self, buf: &[u8]) -> Option<(usize, i32)> {
        let body = buf.strip_suffix(b"\n")?;
        let start = body.iter().rposition(|&b| b == b'\n')?;
        let line = std::str::from_utf8(&body[start + 1..]).ok()?;
        let status = line.strip_prefix(self.marker.as_str())?.strip_prefix(' ')?;
        Some((start, status.parse().unwrap_or(-1)))
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
}
