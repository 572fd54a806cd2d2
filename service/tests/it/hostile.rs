//! usersvc facing hostile clients and other local users, against the real binary: one request
//! cannot exhaust memory, slow and idle connections cannot starve it, its files are its own,
//! secrets stay secret, settings that cannot work fail at start, and shutdown has a deadline.

use super::bin;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testbed::Usersvc;

/// A wrapper script that starts the binary under `setup` shell lines (a umask, a ulimit), as
/// an init script or a shell would.
fn wrapped(dir: &Path, setup: &str) -> PathBuf {
    let path = dir.join("usersvc-wrapped");
    std::fs::write(
        &path,
        format!("#!/bin/sh\n{setup}\nexec '{}' \"$@\"\n", bin().display()),
    )
    .expect("write wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// A memory figure of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("proc status")
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} for pid {pid}"))
}

fn batch_of(n: usize, method: &str) -> Vec<u8> {
    let calls: Vec<Value> = (0..n)
        .map(|i| json!({"jsonrpc": "2.0", "method": method, "id": i}))
        .collect();
    serde_json::to_vec(&calls).expect("encode")
}

#[test]
fn one_request_cannot_exhaust_memory() {
    let s = Usersvc::start_with(bin(), &["--max-response", "1048576"]);
    // 200 users of about 1 KB: get_users answers about 200 KB.
    let users: Vec<Value> = (0..200)
        .map(|i| json!({"id": format!("u{i:03}"), "bio": "x".repeat(1000)}))
        .collect();
    s.result("put_users", json!([users]));
    let before = status_kib(s.pid(), "VmRSS");

    // 1000 get_users would answer 200 MB: the answer stops at the cap, the rest are not run.
    let r = s.post(&batch_of(1000, "get_users"));
    assert_eq!(r.status, 200);
    assert!(r.body.len() < 2 << 20, "answer of {} bytes", r.body.len());
    let answers = r.json();
    let answers = answers.as_array().expect("a batch answer");
    assert_eq!(answers.len(), 1000, "every call is answered");
    let refused: Vec<&Value> = answers
        .iter()
        .filter(|a| a["error"]["code"] == -32004)
        .collect();
    assert!(refused.len() > 990, "{} refused", refused.len());
    let data = refused[0]["error"]["data"].as_str().unwrap_or_default();
    assert!(data.contains("--max-response"), "{data}");
    let grown = status_kib(s.pid(), "VmRSS").saturating_sub(before);
    assert!(grown < 50 * 1024, "RSS grew by {grown} KiB for one request");

    // More calls than --max-batch: refused whole, before any runs.
    let r = s.post(&batch_of(1001, "ping")).json();
    assert_eq!(r["error"]["code"], -32600, "{r}");
    assert!(
        r["error"]["data"]
            .as_str()
            .is_some_and(|d| d.contains("at most 1000 calls (--max-batch)")),
        "{r}"
    );
    let invalid = serde_json::to_vec(&vec![1; 524_287]).expect("encode");
    let r = s.post(&invalid);
    assert!(
        r.body.len() < 1024,
        "{} bytes for invalid items",
        r.body.len()
    );

    // An unpaged read past the cap says how to page; a page within it is served.
    let small = Usersvc::start_with(bin(), &["--max-response", "65536"]);
    small.result("put_users", json!([users]));
    let r = small.call("get_users", Value::Null);
    assert_eq!(r["error"]["code"], -32004, "{r}");
    let data = r["error"]["data"].as_str().unwrap_or_default();
    assert!(data.contains("limit") && data.contains("after"), "{data}");
    let page = small.result("get_users", json!({"limit": 10}));
    assert_eq!(page.as_array().map(Vec::len), Some(10));
}

#[test]
fn slow_and_idle_connections_cannot_starve_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    // 256 descriptors, as in the report: at most 192 client connections.
    let script = wrapped(dir.path(), "ulimit -n 256");
    let s = Usersvc::start_with(&script, &["--header-timeout", "2s", "--idle-timeout", "4s"]);
    let addr = s.addr();

    // A client sending its headers a byte at a time, and 300 that connect and say nothing.
    let mut slow = TcpStream::connect(addr).expect("connect");
    let slow_started = Instant::now();
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    assert_eq!(idle.len(), 300);
    for b in b"POST / HTT" {
        if slow.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // New clients and /health are still served, promptly.
    for _ in 0..5 {
        let started = Instant::now();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(1)))
            .build()
            .into();
        let status = agent
            .get(format!("http://{addr}/health"))
            .call()
            .map(|r| r.status().as_u16())
            .unwrap_or_else(|e| panic!("/health not served within 1 s: {e}\n{}", s.log()));
        assert_eq!(status, 200);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    // The slow client is closed once the header timeout has passed (with a little slack).
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    let n = slow.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(
        slow_started.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        slow_started.elapsed()
    );
    drop(idle);
    // A keep-alive connection idle past --idle-timeout is closed too.
    let mut kept = TcpStream::connect(addr).expect("connect");
    let request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    kept.write_all(request).expect("send");
    let mut got = [0u8; 4096];
    let n = kept.read(&mut got).expect("answer");
    assert!(got[..n].starts_with(b"HTTP/1.1 200"));
    let idle_from = Instant::now();
    kept.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    assert_eq!(kept.read(&mut got).unwrap_or(0), 0, "closed when idle");
    let waited = idle_from.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(8),
        "idle connection closed after {waited:?}"
    );
}

/// Every file usersvc makes (database and its side files, journal, its lock, the copy, the pid
/// file, the log of `upgrade --start`, the control socket) is 0600, whatever the umask.
fn files_are_private_under(umask: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = wrapped(dir.path(), &format!("umask {umask}"));
    let d = dir.path().display();
    let port = testbed::process::free_port("127.0.0.1");
    let config = dir.path().join("usersvc.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndatabase_url = \"sqlite://{d}/users.db\"\njournal = \"{d}/usersvc.journal\"\npid_file = \"{d}/usersvc.pid\"\n"
        ),
    )
    .expect("config");
    let out = Command::new(&script)
        .arg("--config")
        .arg(&config)
        .args(["upgrade", "--start"])
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = testbed::http::agent();
    let url = format!("http://127.0.0.1:{port}/");
    let put =
        br#"{"jsonrpc":"2.0","method":"put_user","params":{"user":{"id":"secret-person"}},"id":1}"#;
    let r = testbed::http::post(&agent, &url, &[("content-type", "application/json")], put);
    assert_eq!(r.status, 200);
    let copy = dir.path().join("usersvc.snapshot");
    testbed::eventually("the copy is written", Duration::from_secs(20), || {
        service::store::read_copy(&copy).is_ok_and(|u| u.len() == 1)
    });
    let pid: u32 = std::fs::read_to_string(dir.path().join("usersvc.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    for name in [
        "users.db",
        "users.db-wal",
        "usersvc.journal",
        "usersvc.journal.lock",
        "usersvc.snapshot",
        "usersvc.pid",
        "usersvc.log",
        "usersvc.pid.ctl",
    ] {
        let mode = std::fs::metadata(dir.path().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{name} is {mode:o} under umask {umask}");
    }
    assert!(
        testbed::process::signal(pid, 15),
        "usersvc {pid} was gone before it was told to stop"
    );
    testbed::eventually("it stops", Duration::from_secs(30), || {
        !service::is_alive(pid)
    });
}

#[test]
fn its_files_are_private_whatever_the_umask() {
    files_are_private_under("022");
    files_are_private_under("002");
}

#[test]
fn the_control_socket_refuses_another_user() {
    assert!(
        testbed::is_root(),
        "this test runs a client as another user (nobody): run the suite as root, as CI does"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let pid_file = dir.path().join("usersvc.pid");
    let s = Usersvc::start_with(
        bin(),
        &["--pid-file", pid_file.to_str().expect("utf-8 path")],
    );
    let control = dir.path().join("usersvc.pid.ctl");
    testbed::eventually("the control socket exists", Duration::from_secs(10), || {
        control.exists()
    });
    // As a too-wide umask or a careless chmod would leave it: the peer check still refuses.
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let client = format!(
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect({:?}); s.sendall(b'upgrade 1000\\n'); print(s.recv(100).decode(), end='')",
        control.display().to_string()
    );
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--", "python3", "-c", &client])
        .output()
        .expect("runuser");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said.trim(),
        "error not allowed",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    testbed::eventually("the refusal is logged", Duration::from_secs(5), || {
        s.log().contains("control socket: command refused")
    });
    // A command line with no end is cut off, not read forever.
    let mut stream = std::os::unix::net::UnixStream::connect(&control).expect("connect");
    let _ = stream.write_all(&[b'x'; 4096]);
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert_eq!(answer.trim(), "error command too long");
    assert_eq!(s.result("ping", Value::Null), "pong", "still serving");
}

#[test]
fn credentials_stay_secret() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("token");
    std::fs::write(&token, "t0p-s3cret\n").expect("token");
    // Nothing listens on port 1: the pull fails, quoting its URL.
    let s = Usersvc::start_with(
        bin(),
        &[
            "--pull-url",
            "http://puller:hunter2@127.0.0.1:1/users.json?token=QSECRET&page=2",
            "--pull-interval",
            "200ms",
            "--auth-token-file",
            token.to_str().expect("utf-8"),
        ],
    );
    testbed::eventually("a pull failed", Duration::from_secs(10), || {
        s.get("/health").json()["pull"]["failed"]
            .as_u64()
            .is_some_and(|n| n > 0)
    });
    let health = s.get("/health").text();
    // The password, and the query's values (a token is often sent there), wholly.
    for secret in ["hunter2", "QSECRET"] {
        assert!(!health.contains(secret), "{health}");
        assert!(!s.log().contains(secret), "{}", s.log());
    }
    assert!(health.contains("puller:***@127.0.0.1"), "{health}");
    assert!(health.contains("?token=***&page=***"), "{health}");
    // The token from the file, its newline dropped.
    let ping = br#"{"jsonrpc":"2.0","method":"ping","id":1}"#;
    let json = ("content-type", "application/json");
    assert_eq!(s.post(ping).status, 401);
    let ok = s.post_with(&[json, ("authorization", "Bearer t0p-s3cret")], ping);
    assert_eq!(ok.status, 200);
    // --help never shows an environment value that may hold one.
    let help = Command::new(bin())
        .arg("--help")
        .env("USERSVC_DATABASE_URL", "postgres://u:pw-in-env@db/x")
        .output()
        .expect("help");
    assert!(!String::from_utf8_lossy(&help.stdout).contains("pw-in-env"));
}

/// A value its flag cannot take is a usage error (exit 2, as clap reports any bad flag), naming
/// the flag and what it allows; the same value from the file is refused too (`config.rs`).
#[test]
fn settings_that_cannot_work_fail_at_start() {
    for (flag, value, allowed) in [
        ("--pull-interval", "0s", "longer than 0"),
        ("--riemann-interval", "0s", "longer than 0"),
        ("--request-timeout", "0s", "longer than 0"),
        ("--max-batch", "0", "0 is not in 1.."),
        (
            "--body-limit",
            "999999999",
            "999999999 is not in 1..=67108864",
        ),
        ("--max-response", "100", "100 is not in 1024.."),
    ] {
        let out = Command::new(bin())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                "sqlite::memory:",
            ])
            .args([flag, value])
            .env("RUST_BACKTRACE", "1")
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(
            err.starts_with(&format!("error: invalid value '{value}' for '{flag} <")),
            "{err}"
        );
        assert!(err.contains(allowed), "{err}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    }
}

/// A Riemann server that takes the events and then answers a byte every half second, an
/// answer it says is 200 bytes long: each read succeeds, the answer never ends in time.
fn drip_riemann() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut head = [0u8; 4];
                while stream.read_exact(&mut head).is_ok() {
                    let mut body = vec![0u8; u32::from_be_bytes(head) as usize];
                    if stream.read_exact(&mut body).is_err() {
                        return;
                    }
                    for b in [0u8, 0, 0, 200].into_iter().chain(std::iter::repeat(0)) {
                        std::thread::sleep(Duration::from_millis(500));
                        if stream.write_all(&[b]).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn sigterm_exits_in_time_with_a_stalled_riemann_server() {
    let riemann = drip_riemann();
    let mut s = Usersvc::start_with(
        bin(),
        &[
            "--riemann",
            &riemann.to_string(),
            "--riemann-interval",
            "200ms",
            "--request-timeout",
            "2s",
        ],
    );
    s.result("put_user", json!({"user": {"id": "kept"}}));
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    s.signal(libc::SIGTERM);
    let status = s
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("still running 30 s after SIGTERM:\n{}", s.log()));
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(9),
        "SIGTERM took {took:?} (request timeout 2 s + a few): {status}\n{}",
        s.log()
    );
    // The copy was saved on the way out.
    let copy = s.dir().join("usersvc.snapshot");
    assert_eq!(
        service::store::read_copy(&copy).map(|u| u.len()).ok(),
        Some(1)
    );
}

/// Serves `payload` as JSON to every GET, once `go` says so.
fn upstream(payload: Vec<u8>, go: std::sync::mpsc::Receiver<()>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut waited = false;
        for stream in listener.incoming().flatten() {
            if !waited {
                let _ = go.recv();
                waited = true;
            }
            let mut stream = stream;
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                payload.len()
            );
            let _ = stream.write_all(&payload);
        }
    });
    addr
}

#[test]
fn pulling_costs_a_small_multiple_of_the_payload() {
    // 10 MB of users, the very last one invalid: all of it is parsed, then refused.
    let mut users: Vec<Value> = (0..95_000)
        .map(|i| json!({"id": format!("user-{i:06}"), "name": format!("User {i}"), "note": "x".repeat(60)}))
        .collect();
    users.push(json!({"name": "no id"}));
    let payload = serde_json::to_vec(&users).expect("encode");
    drop(users);
    let mb = payload.len() as f64 / 1e6;
    let (go, wait) = std::sync::mpsc::channel();
    let addr = upstream(payload.clone(), wait);
    let url = format!("http://{addr}/users.json");
    let s = Usersvc::start_with(bin(), &["--pull-url", &url, "--pull-interval", "1h"]);
    std::thread::sleep(Duration::from_millis(300));
    let before = status_kib(s.pid(), "VmHWM");
    go.send(()).expect("go");
    testbed::eventually("the pull was refused", Duration::from_secs(30), || {
        s.get("/health").json()["pull"]["failed"] == 1
    });
    let grown = status_kib(s.pid(), "VmHWM").saturating_sub(before) as f64 / 1024.0 * 1.048_576;
    eprintln!(
        "pull of {mb:.1} MB refused at its last user: peak memory grew {grown:.1} MB ({:.1}x)",
        grown / mb
    );
    assert!(
        grown <= 4.0 * mb,
        "peak grew {grown:.1} MB for a {mb:.1} MB payload"
    );
    assert_eq!(s.result("get_users", json!({"limit": 1})), json!([]));
}

#[test]
fn listening_beyond_loopback_without_a_token_is_warned_about() {
    let open = Usersvc::start_with(bin(), &["--listen", "0.0.0.0:0"]);
    assert!(
        open.log()
            .contains("listening beyond loopback without a token"),
        "{}",
        open.log()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("token");
    std::fs::write(&token, "t").expect("token");
    let guarded = Usersvc::start_with(
        bin(),
        &[
            "--listen",
            "0.0.0.0:0",
            "--auth-token-file",
            token.to_str().expect("utf-8"),
        ],
    );
    assert!(
        !guarded.log().contains("without a token"),
        "{}",
        guarded.log()
    );
}
