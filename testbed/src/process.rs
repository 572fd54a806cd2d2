//! Spawning peers: children that die with the test, finding and building workspace binaries.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Sends `sig` to `pid`: `false` when no such process is left (it exited meanwhile). Any other
/// failure (a bad signal number, no permission) is a broken test and panics.
pub fn signal(pid: u32, sig: i32) -> bool {
    use nix::sys::signal::{Signal, kill};
    let sig = Signal::try_from(sig).unwrap_or_else(|e| panic!("signal {sig}: {e}"));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
    match kill(pid, sig) {
        Ok(()) => true,
        Err(nix::errno::Errno::ESRCH) => false,
        Err(e) => panic!("kill -{sig} {pid}: {e}"),
    }
}

/// The user tests run as (peers log in or run as this user when not root).
pub fn current_user() -> String {
    std::env::var("USER").unwrap_or_else(|_| "root".into())
}

/// A port free on `ip` right now (a peer may still race for it: callers retry or tolerate that).
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on {ip}: {e}"))
}

/// A finished setup command's output; panics with its output when it could not run or failed.
/// `what` names the command and, where useful, how to install it.
pub fn checked(what: &str, out: std::io::Result<std::process::Output>) -> std::process::Output {
    let out = out.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `f` until it holds; panics naming `what` after `timeout`. For effects that happen
/// asynchronously (another instance, a background sender), never as a timing assertion.
pub fn eventually(what: &str, timeout: Duration, f: impl Fn() -> bool) {
    assert!(
        within(timeout, f),
        "never happened within {timeout:?}: {what}"
    );
}

/// Whether `f` holds within `timeout`, asked every 20 ms.
pub fn within(timeout: Duration, f: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The workspace's root directory (this crate lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Finds a workspace binary in the usual target directory; builds it (in a separate target dir, so
/// a running `cargo test` holding the main one's lock cannot deadlock us) when it is missing.
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    for profile in ["debug", "release"] {
        let p = target.join(profile).join(bin);
        if p.is_file() {
            return p;
        }
    }
    let own = root.join("target").join("testbed");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-q", "-p", package, "--bin", bin, "--target-dir"])
        .arg(&own)
        .current_dir(&root)
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {bin}: {e}"));
    assert!(
        status.success(),
        "cargo build -p {package} --bin {bin} failed"
    );
    own.join("debug").join(bin)
}

/// `make` as a user's shell runs it: without the variables `cargo test` sets for the test
/// binary itself. ring's build script watches `CARGO_MANIFEST_DIR`, so a cargo started with the
/// test's value rebuilt ring and relinked every binary of `target/debug` while other tests were
/// starting them (a CI run failed on "usersvc binary is missing").
pub fn make() -> Command {
    let mut cmd = Command::new("make");
    without_test_env(&mut cmd);
    cmd
}

/// Removes from `cmd` what `cargo test` sets for the running test crate (see [`make`]).
pub fn without_test_env(cmd: &mut Command) -> &mut Command {
    const SET_FOR_THE_TEST: [&str; 5] = [
        "CARGO_MANIFEST_",
        "CARGO_PKG_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
        "CARGO_PRIMARY_PACKAGE",
    ];
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if SET_FOR_THE_TEST.iter().any(|p| name.starts_with(p)) || name == "CARGO_TARGET_TMPDIR" {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// Makes `cmd`'s child receive SIGKILL when the thread that spawned it dies.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: std's pre_exec is unsafe because the closure runs between fork and exec; prctl
    // is async-signal-safe and touches only the child's own state.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        })
    }
}

/// Every process below `pid` (children, grandchildren, …), from /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            // stat: "pid (comm) state ppid …"; comm may hold spaces, so split after ')'.
            let ppid = std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|st| {
                    st.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                });
            if let Some(pp) = ppid {
                parent_of.push((p, pp));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for &(child, parent) in &parent_of {
            if parent == p && !out.contains(&child) {
                out.push(child);
                frontier.push(child);
            }
        }
    }
    out
}

/// A running child process whose stderr is captured line by line; killed on drop.
pub struct Peer {
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    exited: Option<ExitStatus>,
}

impl Peer {
    /// Spawns `cmd` with stderr captured (stdout too, merged into the same log).
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({:?}): {e}", cmd.get_program()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(err) = child.stderr.take() {
            drain(err, lines.clone());
        }
        if let Some(out) = child.stdout.take() {
            drain(out, lines.clone());
        }
        Self {
            name: name.to_owned(),
            child,
            lines,
            exited: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the peer printed so far.
    pub fn log(&self) -> String {
        toolkit_core::lock(&self.lines).join("\n")
    }

    /// Waits until a printed line satisfies `find`, returning what it extracted.
    pub fn wait_for_line<T>(&mut self, timeout: Duration, find: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = toolkit_core::lock(&self.lines).iter().find_map(|l| find(l)) {
                return found;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(50)); // let the drain threads finish
                panic!(
                    "{} exited ({status}) before it was ready:\n{}",
                    self.name,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready after {timeout:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        if self.exited.is_none() {
            signal(self.child.id(), sig);
        }
    }

    /// Waits for exit, at most `timeout`; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited {
                return Some(s);
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exited = Some(s);
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL the process and everything it started (a server's per-connection children
    /// too, so open connections drop as if the machine went away), then reap.
    pub fn kill_tree(&mut self) {
        if self.exited.is_none() {
            for p in descendants(self.child.id()) {
                signal(p, libc::SIGKILL);
            }
        }
        self.kill();
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn drain(stream: impl Read + Send + 'static, lines: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            toolkit_core::lock(&lines).push(line);
        }
    });
}

/// Fails the test with the install step when a peer's binary is missing (never a silent skip).
pub fn require(bin: &str, package: &str) {
    assert!(
        std::path::Path::new(bin).exists(),
        "{bin} is missing: install it with `apt-get install {package}` (make test does, as root)"
    );
}
