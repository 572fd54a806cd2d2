//! A real `usersvc` process on a free loopback port with its own temporary SQLite database.

use crate::http;
use crate::process::{Peer, workspace_bin};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Usersvc {
    peer: Peer,
    addr: SocketAddr,
    agent: ureq::Agent,
    next_id: AtomicU64,
    database_url: String,
    binary: PathBuf,
    extra: Vec<String>,
    // Kept last: the directory outlives the process using it.
    dir: tempfile::TempDir,
}

/// Finds the `usersvc` binary: `$USERSVC_BIN`, else the workspace's, built when missing.
pub fn binary() -> PathBuf {
    std::env::var_os("USERSVC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_bin("service", "usersvc"))
}

impl Usersvc {
    /// Starts usersvc with a fresh SQLite database.
    pub fn start() -> Self {
        Self::start_with(&binary(), &[])
    }

    /// Starts `binary` with extra arguments and a fresh SQLite database in a temp dir.
    pub fn start_with(binary: &Path, extra: &[&str]) -> Self {
        Self::start_on(binary, None, extra)
    }

    /// Starts `binary` on `database_url` (a fresh SQLite file in a temp dir when `None`).
    pub fn start_on(binary: &Path, database_url: Option<&str>, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot make a temp dir: {e}"));
        let database_url = database_url.map_or_else(
            || format!("sqlite://{}", dir.path().join("users.db").display()),
            str::to_owned,
        );
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let (peer, addr) = launch(binary, &database_url, &extra, dir.path(), 200);
        Self {
            peer,
            addr,
            agent: http::agent(),
            next_id: AtomicU64::new(1),
            database_url,
            binary: binary.to_owned(),
            extra,
            dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.peer.pid()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    pub fn log(&self) -> String {
        self.peer.log()
    }

    /// Waits up to 10 s for a log line containing `text`, and panics with the log if none
    /// comes: the server logs through a non-blocking writer and a pipe, so its log may trail
    /// what it already did.
    pub fn expect_log(&self, text: &str) {
        let logged = crate::process::within(Duration::from_secs(10), || self.log().contains(text));
        assert!(logged, "no log line with {text:?}:\n{}", self.log());
    }

    /// POSTs a raw body as `application/json`.
    pub fn post(&self, body: &[u8]) -> http::Response {
        http::post(
            &self.agent,
            &self.url(),
            &[("content-type", "application/json")],
            body,
        )
    }

    /// POSTs with explicit headers.
    pub fn post_with(&self, headers: &[(&str, &str)], body: &[u8]) -> http::Response {
        http::post(&self.agent, &self.url(), headers, body)
    }

    pub fn get(&self, path: &str) -> http::Response {
        http::get(&self.agent, &format!("http://{}{path}", self.addr))
    }

    /// Calls a method; returns the whole response object.
    pub fn call(&self, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut req = json!({"jsonrpc": "2.0", "method": method, "id": id});
        if !params.is_null() {
            req["params"] = params;
        }
        let resp = self.post(req.to_string().as_bytes());
        assert_eq!(resp.status, 200, "{method}: {}", resp.text());
        let v = resp.json();
        assert_eq!(v["id"], id, "response id must echo the request id: {v}");
        v
    }

    /// Calls a method that must succeed; returns its result.
    pub fn result(&self, method: &str, params: Value) -> Value {
        let v = self.call(method, params);
        assert!(v.get("error").is_none(), "{method} failed: {v}");
        v["result"].clone()
    }

    pub fn signal(&self, sig: i32) {
        self.peer.signal(sig);
    }

    /// SIGTERM, then waits for the exit (at most 30 s).
    pub fn terminate(&mut self) -> ExitStatus {
        self.peer.signal(libc::SIGTERM);
        self.peer
            .wait_timeout(Duration::from_secs(30))
            .unwrap_or_else(|| {
                panic!(
                    "usersvc did not exit within 30 s of SIGTERM:\n{}",
                    self.log()
                )
            })
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.peer.wait_timeout(timeout)
    }

    pub fn kill(&mut self) {
        self.peer.kill();
    }

    /// Stops (SIGTERM) and starts again on the same database, on a new port.
    pub fn restart(&mut self) {
        self.terminate();
        self.start_again();
    }

    /// Starts the binary again (same database, directory and arguments) after it stopped or was
    /// killed.
    pub fn start_again(&mut self) {
        self.start_again_with_health(200);
    }

    /// Like `start_again`, for a start that serves degraded (`/health` answers `health`, e.g.
    /// 503 on a cold start while the database is down).
    pub fn start_again_with_health(&mut self, health: u16) {
        let extra = self.extra.clone();
        let (peer, addr) = launch(
            &self.binary,
            &self.database_url,
            &extra,
            self.dir.path(),
            health,
        );
        self.peer = peer;
        self.addr = addr;
    }

    /// Runs the binary (same database, directory and arguments) expecting it to fail before it
    /// serves; returns its exit status and stderr.
    pub fn run_to_failure(&self) -> (ExitStatus, String) {
        let out = Command::new(&self.binary)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                &self.database_url,
            ])
            .args(&self.extra)
            .current_dir(self.dir.path())
            .env_remove("USERSVC_CONFIG")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()));
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn launch(
    binary: &Path,
    database_url: &str,
    extra: &[String],
    dir: &Path,
    health: u16,
) -> (Peer, SocketAddr) {
    assert!(
        binary.is_file(),
        "usersvc binary {} is missing: run `cargo build -p service` (make test does)",
        binary.display()
    );
    let mut cmd = Command::new(binary);
    // Loopback on a free port unless the caller chose where to listen.
    if !extra.iter().any(|a| a == "--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    cmd.args(["--log-format", "json", "--database-url", database_url])
        .args(extra)
        .current_dir(dir)
        .env_remove("USERSVC_CONFIG")
        .env_remove("USERSVC_AUTH_TOKEN");
    let mut peer = Peer::spawn("usersvc", cmd);
    let addr: SocketAddr = peer.wait_for_line(Duration::from_secs(30), |line| {
        let v: Value = serde_json::from_str(line).ok()?;
        if v["message"].as_str()?.starts_with("listening") {
            v["addr"].as_str()?.parse().ok()
        } else {
            None
        }
    });
    let agent = http::agent();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http::get(&agent, &format!("http://{addr}/health")).status != health {
        assert!(
            Instant::now() < deadline,
            "usersvc /health never answered {health}:\n{}",
            peer.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (peer, addr)
}
