//! Concurrent writers for fault-schedule tests: client threads that write to a few shared ids
//! back to back (plain upserts, conditional writes on the revision just read, bulk writes of two
//! ids) with **no retries**, each write carrying a unique token in its document and recorded
//! with what it was told (`history::Write`). A connection per request, written by hand, so that
//! a refused connection is known to have sent nothing and nothing retries behind the test.

use crate::history::{Outcome, Write};
use serde_json::{Value, json};
use std::io::{Read, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A small seeded generator (xorshift64*): the same seed gives the same choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A duration between `lo` and `hi`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(self.below(span + 1))
    }
}

/// What the writers do.
#[derive(Debug, Clone)]
pub struct Workload {
    pub clients: usize,
    /// Writes go to ids `k0 … k{ids-1}`, shared by every client.
    pub ids: usize,
    pub seed: u64,
    /// Longest wait for an answer; past it the write's outcome is unknown.
    pub timeout: Duration,
    /// Pause between a client's writes.
    pub pause: Duration,
}

pub struct Writers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Write>>>,
}

impl Writers {
    /// Starts the clients against `addr`.
    pub fn start(addr: SocketAddr, w: &Workload) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..w.clients)
            .map(|client| {
                let (stop, w) = (stop.clone(), w.clone());
                std::thread::spawn(move || run(addr, client, &w, &stop))
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops the clients (each finishes the write it is in) and returns every write.
    pub fn stop(self) -> Vec<Write> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .flat_map(|t| {
                t.join()
                    .unwrap_or_else(|_| panic!("a writer thread panicked"))
            })
            .collect()
    }
}

fn run(addr: SocketAddr, client: usize, w: &Workload, stop: &AtomicBool) -> Vec<Write> {
    let mut rng = Rng::new(w.seed ^ ((client as u64 + 1) << 32));
    let mut done = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let token = format!("c{client}-{n}");
        let id = |rng: &mut Rng| format!("k{}", rng.below(w.ids as u64));
        let doc = |id: &str| json!({"id": id, "w": token, "c": client});
        let roll = rng.below(100);
        let (ids, expect, request) = if roll < 55 {
            let id = id(&mut rng);
            let req = json!({"jsonrpc": "2.0", "id": n, "method": "put_user",
                "params": {"user": doc(&id)}});
            (vec![id], None, req)
        } else if roll < 80 {
            let id = id(&mut rng);
            // The revision just read (0: absent, create only); a read that fails skips the turn.
            let read = json!({"jsonrpc": "2.0", "id": n, "method": "get_user", "params": [id]});
            let rev = match post(addr, &read, w.timeout) {
                Ok(v) if v["result"]["rev"].is_i64() => v["result"]["rev"].as_i64(),
                Ok(v) if v["error"]["code"] == -32001 => Some(0),
                _ => None,
            };
            let Some(rev) = rev else {
                std::thread::sleep(w.pause);
                continue;
            };
            let req = json!({"jsonrpc": "2.0", "id": n, "method": "put_user",
                "params": {"user": doc(&id), "rev": rev}});
            (vec![id], Some(rev), req)
        } else {
            let a = rng.below(w.ids as u64);
            let b = (a + 1 + rng.below(w.ids as u64 - 1)) % w.ids as u64;
            let ids = vec![format!("k{a}"), format!("k{b}")];
            let users: Vec<Value> = ids.iter().map(|id| doc(id)).collect();
            let req = json!({"jsonrpc": "2.0", "id": n, "method": "put_users", "params": [users]});
            (ids, None, req)
        };
        let invoked = Instant::now();
        let outcome = match post(addr, &request, w.timeout) {
            Ok(answer) => outcome_of(&answer, ids.len()),
            Err(Sent::No) => Outcome::NotSent,
            Err(Sent::Maybe(e)) => Outcome::Unknown(e),
        };
        done.push(Write {
            token,
            ids,
            expect,
            invoked,
            completed: Instant::now(),
            outcome,
        });
        std::thread::sleep(w.pause);
    }
    done
}

/// `n` writes of `size` bytes each at once, as `n` clients would send them: `put_user` of ids
/// `burst0 … burst{n-1}`, each with a token (`burst{tag}-k`) the checker follows.
pub fn burst(addr: SocketAddr, n: usize, size: usize, tag: u64, timeout: Duration) -> Vec<Write> {
    let pad = "x".repeat(size);
    std::thread::scope(|scope| {
        let clients: Vec<_> = (0..n)
            .map(|k| {
                let pad = &pad;
                scope.spawn(move || {
                    let token = format!("burst{tag}-{k}");
                    let id = format!("burst{k}");
                    let request = json!({"jsonrpc": "2.0", "id": k, "method": "put_user",
                        "params": {"user": {"id": id, "w": token, "pad": pad}}});
                    let invoked = Instant::now();
                    let outcome = match post(addr, &request, timeout) {
                        Ok(answer) => outcome_of(&answer, 1),
                        Err(Sent::No) => Outcome::NotSent,
                        Err(Sent::Maybe(e)) => Outcome::Unknown(e),
                    };
                    Write {
                        token,
                        ids: vec![id],
                        expect: None,
                        invoked,
                        completed: Instant::now(),
                        outcome,
                    }
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|c| {
                c.join()
                    .unwrap_or_else(|_| panic!("a burst client panicked"))
            })
            .collect()
    })
}

/// What a write's answer says happened.
pub fn outcome_of(answer: &Value, ids: usize) -> Outcome {
    if let Some(e) = answer.get("error") {
        let code = e["code"].as_i64().unwrap_or_default();
        let text = format!("{code} {} {}", e["message"], e["data"]);
        // A timeout leaves the write to the committer; "could not be queued" follows an attempt.
        return if code == -32003 || text.contains("could not be queued") {
            Outcome::Unknown(text)
        } else {
            Outcome::Refused(text)
        };
    }
    let results: Vec<&Value> = match &answer["result"] {
        Value::Array(a) => a.iter().collect(),
        one => vec![one],
    };
    if results.len() != ids {
        return Outcome::Unknown(format!("answer for {} ids: {answer}", results.len()));
    }
    if results.iter().all(|r| r["queued"] == true) {
        return Outcome::Queued;
    }
    match results.iter().map(|r| r["rev"].as_i64()).collect() {
        Some(revs) => Outcome::Committed(revs),
        None => Outcome::Unknown(format!("unexpected answer: {answer}")),
    }
}

/// Why a request got no answer: `No` when the connection was never made.
enum Sent {
    No,
    Maybe(String),
}

fn post(addr: SocketAddr, body: &Value, timeout: Duration) -> Result<Value, Sent> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|_| Sent::No)?;
    let maybe = |e: std::io::Error| Sent::Maybe(e.to_string());
    stream.set_read_timeout(Some(timeout)).map_err(maybe)?;
    stream.set_write_timeout(Some(timeout)).map_err(maybe)?;
    let body = body.to_string();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(maybe)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(maybe)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| Sent::Maybe(format!("no complete answer: {text:?}")))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(Sent::Maybe(format!("answered {head:?}")));
    }
    serde_json::from_str(body).map_err(|e| Sent::Maybe(format!("answer is not JSON: {e}")))
}
