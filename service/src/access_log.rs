//! The access log: one line per JSON-RPC call (method, id, outcome code, duration, batch index),
//! at `info` for an error and `debug` otherwise, under the target `usersvc::access`
//! (`--log usersvc::access=debug` shows every call). A disabled level costs one check; lines go
//! through the non-blocking writer set up in `main.rs`, so a slow log never holds a request.

use crate::rpc::{Call, Observe};

/// Longest method name or id written; a client's 1 MB id must not become a 1 MB log line.
const MAX_FIELD: usize = 64;

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

pub struct AccessLog;

impl Observe for AccessLog {
    fn call(&self, c: &Call<'_>) {
        // A text log writes strings escaped (Debug), a JSON log as JSON strings: a method name
        // cannot forge a log line. `-`: no method could be read from the request.
        let method = c.method.map_or("-", clip);
        // An id is JSON text, written as sent (JSON escapes control characters itself); none
        // for a notification or an id that could not be read.
        let id = c.id.map(|id| tracing::field::display(clip(id)));
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
