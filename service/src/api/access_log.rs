//! The access log: one line per JSON-RPC call (method, id, outcome code, duration, batch index),
//! at `info` for an error and `debug` otherwise, under the target `usersvc::access`
//! (`--log usersvc::access=debug` shows every call). A disabled level costs one check; lines go
//! through the non-blocking writer set up in `main.rs`, so a slow log never holds a request.
//!
//! A client can make errors at will (a batch of 1000 invalid calls), so `info` lines are bounded:
//! at most [`INFO_PER_SECOND`] a second, and one line then says how many were left out; the
//! journal's rate limit would otherwise drop usersvc's other lines with them.

use super::rpc::{Call, Observe};
use std::sync::Mutex;
use std::time::Instant;

/// Longest method name or id written; a client's 1 MB id must not become a 1 MB log line.
const MAX_FIELD: usize = 64;

/// Failed-call lines written per second at most.
pub const INFO_PER_SECOND: u32 = 100;

fn clip(s: &str) -> &str {
    if s.len() <= MAX_FIELD {
        return s;
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The current one-second window: when it began, lines written in it, lines left out.
struct Window {
    began: Instant,
    written: u32,
    left_out: u64,
}

pub struct AccessLog {
    window: Mutex<Window>,
}

impl Default for AccessLog {
    fn default() -> Self {
        Self {
            window: Mutex::new(Window {
                began: Instant::now(),
                written: 0,
                left_out: 0,
            }),
        }
    }
}

impl AccessLog {
    /// Whether a failed call's line may be written now; says how many were left out when a new
    /// window begins.
    fn admit(&self) -> bool {
        let Ok(mut w) = self.window.lock() else {
            return false;
        };
        if w.began.elapsed().as_secs() >= 1 {
            if w.left_out > 0 {
                tracing::warn!(target: "usersvc::access", left_out = w.left_out,
                    "failed-call lines left out (more than {INFO_PER_SECOND} a second)");
            }
            *w = Window {
                began: Instant::now(),
                written: 0,
                left_out: 0,
            };
        }
        if w.written < INFO_PER_SECOND {
            w.written += 1;
            true
        } else {
            w.left_out += 1;
            false
        }
    }
}

impl Observe for AccessLog {
    fn call(&self, c: &Call<'_>) {
        let failed = c.code.is_some();
        let enabled = if failed {
            tracing::enabled!(target: "usersvc::access", tracing::Level::INFO)
        } else {
            tracing::enabled!(target: "usersvc::access", tracing::Level::DEBUG)
        };
        if !enabled || (failed && !self.admit()) {
            return;
        }
        // Strings are written escaped (quotes, control characters) in text logs and as JSON
        // strings in JSON logs: neither a method nor an id can forge or break a line. `-`: no
        // method could be read. An id is its JSON text as sent; none for a notification.
        let method = c.method.map_or("-", clip);
        let id = c.id.map(clip);
        let us = u64::try_from(c.elapsed.as_micros()).unwrap_or(u64::MAX);
        let batch_index = c.batch_index.map(|i| i as u64);
        match c.code {
            Some(code) => tracing::info!(target: "usersvc::access", method, id, code,
                us, batch_index, "call failed"),
            None => tracing::debug!(target: "usersvc::access", method, id, us,
                batch_index, "call"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_call_lines_are_bounded_per_second() {
        let log = AccessLog::default();
        let admitted = (0..INFO_PER_SECOND + 50).filter(|_| log.admit()).count();
        assert_eq!(admitted, INFO_PER_SECOND as usize);
        assert_eq!(log.window.lock().map(|w| w.left_out).unwrap_or(0), 50);
    }

    #[test]
    fn clipping_keeps_whole_characters() {
        let long = "é".repeat(40);
        assert!(clip(&long).len() <= MAX_FIELD);
        assert!(long.starts_with(clip(&long)));
    }
}
