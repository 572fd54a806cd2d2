//! A steady client load for upgrade and deploy tests: threads that call JSON-RPC `version` on
//! every target, back to back, with **no retries**, recording every answer and every failure.
//! Half the clients keep their connection alive (and honour `Connection: close` by reconnecting
//! for the next request, as browsers and HTTP libraries do); the others open a new connection
//! per request. The HTTP is written by hand so that nothing retries behind the test's back.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const BODY: &str = r#"{"jsonrpc":"2.0","method":"version","id":1}"#;

/// One request's outcome.
#[derive(Debug, Clone)]
pub struct Sample {
    pub target: SocketAddr,
    pub at: Instant,
    pub latency: Duration,
    /// `Ok(revision)` (`"null"` when the release has none) or the failure.
    pub outcome: Result<String, String>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts `per_target` keep-alive clients and `per_target` connection-per-request clients on
    /// every target.
    pub fn start(targets: &[SocketAddr], per_target: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for &target in targets {
            for keep_alive in [true, false] {
                for _ in 0..per_target {
                    let (stop, samples) = (stop.clone(), samples.clone());
                    threads.push(std::thread::spawn(move || {
                        client(target, keep_alive, &stop, &samples);
                    }));
                }
            }
        }
        Self {
            stop,
            samples,
            threads,
        }
    }

    /// Stops the clients and returns every sample, in the order they were taken.
    pub fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        let mut all = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        all.sort_by_key(|s| s.at);
        all
    }
}

/// The failures among `samples`, one line each, for an assertion message.
pub fn failures(samples: &[Sample]) -> Vec<String> {
    samples
        .iter()
        .filter_map(|s| {
            s.outcome
                .as_ref()
                .err()
                .map(|e| format!("{}: {e}", s.target))
        })
        .collect()
}

/// The revisions `target` answered with, in order, as they settled: during an upgrade both
/// servers answer for a few milliseconds (requests already on the old one finish there), so
/// each `window` counts for the revision most of its answers had, and repeats are folded.
pub fn settled_revisions(samples: &[Sample], target: SocketAddr, window: Duration) -> Vec<String> {
    let mine: Vec<&Sample> = samples.iter().filter(|s| s.target == target).collect();
    let Some(first) = mine.first().map(|s| s.at) else {
        return Vec::new();
    };
    let mut buckets: Vec<Vec<&str>> = Vec::new();
    for s in &mine {
        let i = ((s.at - first).as_nanos() / window.as_nanos().max(1)) as usize;
        if buckets.len() <= i {
            buckets.resize(i + 1, Vec::new());
        }
        if let Ok(r) = &s.outcome {
            buckets[i].push(r);
        }
    }
    let mut seen: Vec<String> = Vec::new();
    for b in buckets.iter().filter(|b| !b.is_empty()) {
        let majority = b
            .iter()
            .max_by_key(|r| b.iter().filter(|x| x == r).count())
            .map(|r| (*r).to_owned())
            .unwrap_or_default();
        if seen.last() != Some(&majority) {
            seen.push(majority);
        }
    }
    seen
}

/// Every revision `target` answered with in requests started at or after `from`.
pub fn revisions_since(samples: &[Sample], target: SocketAddr, from: Instant) -> Vec<String> {
    let mut all: Vec<String> = samples
        .iter()
        .filter(|s| s.target == target && s.at >= from)
        .filter_map(|s| s.outcome.clone().ok())
        .collect();
    all.sort();
    all.dedup();
    all
}

fn client(target: SocketAddr, keep_alive: bool, stop: &AtomicBool, samples: &Mutex<Vec<Sample>>) {
    let mut conn: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::SeqCst) {
        let at = Instant::now();
        let outcome = call(target, keep_alive, &mut conn);
        if outcome.is_err() {
            conn = None;
        }
        let sample = Sample {
            target,
            at,
            latency: at.elapsed(),
            outcome,
        };
        if let Ok(mut s) = samples.lock() {
            s.push(sample);
        }
        // A short pause keeps a 2-core machine responsive while still calling every few ms.
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The response's headers that matter here: its Content-Length, and whether it closes.
fn headers(reader: &mut BufReader<TcpStream>) -> Result<(Option<usize>, bool), String> {
    let (mut length, mut close) = (None, false);
    loop {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("read headers: {e}"))?;
        let line = line.trim_end();
        if line.is_empty() {
            return Ok((length, close));
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse::<usize>().ok(),
            "connection" if value.trim().eq_ignore_ascii_case("close") => close = true,
            _ => {}
        }
    }
}

fn call(
    target: SocketAddr,
    keep_alive: bool,
    conn: &mut Option<BufReader<TcpStream>>,
) -> Result<String, String> {
    if conn.is_none() {
        let s = TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        *conn = Some(BufReader::new(s));
    }
    let reader = conn.as_mut().ok_or("no connection")?;
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {target}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{BODY}",
        BODY.len(),
        if keep_alive {
            ""
        } else {
            "Connection: close\r\n"
        },
    );
    reader
        .get_mut()
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut status = String::new();
    reader
        .read_line(&mut status)
        .map_err(|e| format!("read status: {e}"))?;
    if status.is_empty() {
        return Err("connection closed before an answer".into());
    }
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status {}", status.trim()));
    }
    let (length, close) = headers(reader)?;
    let close = close || !keep_alive;
    let mut body = vec![0; length.ok_or("no content-length")?];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("read body: {e}"))?;
    if close {
        *conn = None;
    }
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))?;
    let revision = &v["result"]["revision"];
    if v["result"].is_null() {
        return Err(format!("no result: {v}"));
    }
    Ok(revision
        .as_str()
        .map_or_else(|| revision.to_string(), str::to_owned))
}
