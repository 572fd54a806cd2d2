//! Zero-downtime upgrade and the systemd protocol, against the real binary: `usersvc upgrade`
//! hands the listening socket to a new server under a steady load that never retries, and every
//! way it can fail leaves the old server serving.

use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use testbed::load::{self, Load};
use testbed::{eventually, process::free_port};

/// A service directory: `bin/usersvc` (a link, so a test can swap what it starts), a config file
/// with a pid file. Whatever serves from it is killed on drop.
struct Site {
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Site {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("bin")).expect("mkdir");
        symlink(
            env!("CARGO_BIN_EXE_usersvc"),
            dir.path().join("bin/usersvc"),
        )
        .expect("link");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
            .parse()
            .expect("addr");
        let site = Self { dir, addr };
        site.write_config("");
        site
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_config(&self, extra: &str) {
        let d = self.dir.path().display();
        std::fs::write(
            self.path("usersvc.toml"),
            format!(
                "listen = \"{}\"\ndatabase_url = \"sqlite://{d}/users.db\"\njournal = \"{d}/usersvc.journal\"\npid_file = \"{d}/usersvc.pid\"\nlog_format = \"json\"\n{extra}",
                self.addr
            ),
        )
        .expect("write config");
    }

    /// `bin/usersvc --config usersvc.toml ARGS`, as a deploy hook would run it.
    fn usersvc(&self, args: &[&str]) -> Output {
        let config = self.path("usersvc.toml").display().to_string();
        run(
            &self.path("bin/usersvc"),
            &[&["--config", &config], args].concat(),
        )
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.path("usersvc.pid"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    fn version(&self) -> serde_json::Value {
        let agent = testbed::http::agent();
        testbed::http::post(
            &agent,
            &format!("http://{}/", self.addr),
            &[("content-type", "application/json")],
            br#"{"jsonrpc":"2.0","method":"version","id":1}"#,
        )
        .json()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            testbed::signal(pid, libc::SIGKILL);
        }
    }
}

/// Runs `program ARGS` with RUST_BACKTRACE set (it must not show), echoing what it said.
fn run(program: &Path, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run usersvc");
    eprintln!(
        "usersvc {args:?}: {}\nstdout: {}stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The binary under test itself, not the site's bin/usersvc (which a test may swap).
fn cli(args: &[&str]) -> Output {
    run(Path::new(env!("CARGO_BIN_EXE_usersvc")), args)
}

fn alive(pid: u32) -> bool {
    service::is_alive(pid)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn upgrades_under_load_lose_no_request() {
    let site = Site::new();
    let refused = site.usersvc(&["upgrade"]);
    assert_eq!(refused.status.code(), Some(1));
    let err = stderr(&refused);
    assert!(
        err.starts_with("usersvc: usersvc is not running") && err.contains("upgrade --start"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line, no backtrace: {err}");

    let started = site.usersvc(&["upgrade", "--start"]);
    assert!(started.status.success());
    let first = site.pid().expect("pid file written once serving");
    assert_eq!(
        String::from_utf8_lossy(&started.stdout).trim(),
        format!("usersvc started: pid {first}")
    );
    assert!(
        site.path("usersvc.log").exists(),
        "detached server logs beside the pid file"
    );
    assert_eq!(site.version()["result"]["name"], "usersvc");

    let load = Load::start(&[site.addr], 3);
    std::thread::sleep(Duration::from_millis(300));
    let mut pids = vec![first];
    for _ in 0..3 {
        let out = site.usersvc(&["upgrade"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let new = site.pid().expect("pid file");
        let old = *pids.last().expect("a pid");
        assert_ne!(new, old);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("usersvc upgraded: pid {old} -> {new}")
        );
        eventually(
            "the old server exits after draining",
            Duration::from_secs(10),
            || !alive(old),
        );
        pids.push(new);
        std::thread::sleep(Duration::from_millis(300));
    }
    let samples = load.stop();
    let failures = load::failures(&samples);
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert!(
        samples.len() > 100,
        "the load ran: {} requests",
        samples.len()
    );
    assert!(alive(*pids.last().expect("pid")));
    // The detached servers' log is a file: plain text, no terminal colour codes.
    let log = std::fs::read_to_string(site.path("usersvc.log")).expect("usersvc.log");
    assert!(log.contains("listening on"), "{log}");
    assert!(!log.contains('\x1b'), "colour codes in usersvc.log:\n{log}");
}

#[test]
fn a_failed_upgrade_leaves_the_old_server_serving() {
    let site = Site::new();
    assert!(site.usersvc(&["upgrade", "--start"]).status.success());
    let pid = site.pid().expect("pid");
    let load = Load::start(&[site.addr], 2);

    // The new server cannot start (a config it refuses): its own error comes back. (This client
    // finds the server by --pid-file, since it cannot read that config either.)
    site.write_config("lisen = \"typo\"\n");
    let pid_file = site.path("usersvc.pid").display().to_string();
    let out = cli(&["--pid-file", &pid_file, "upgrade"]);
    site.write_config("");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("the new server failed, the old one keeps serving") && err.contains("lisen"),
        "{err}"
    );
    assert_eq!(site.pid(), Some(pid));
    assert!(alive(pid));

    // A new server that never gets ready is killed at --timeout; meanwhile a second upgrade is
    // refused.
    let hang = site.path("hang");
    let hang_pid = site.path("hang.pid");
    std::fs::write(
        &hang,
        format!(
            "#!/bin/sh\necho $$ > '{}'\nexec sleep 60\n",
            hang_pid.display()
        ),
    )
    .expect("write");
    Command::new("chmod")
        .arg("+x")
        .arg(&hang)
        .status()
        .expect("chmod");
    std::fs::remove_file(site.path("bin/usersvc")).expect("rm link");
    symlink(&hang, site.path("bin/usersvc")).expect("link");
    let config = site.path("usersvc.toml").display().to_string();
    let slow = std::thread::spawn({
        let config = config.clone();
        move || cli(&["--config", &config, "upgrade", "--timeout", "2s"])
    });
    // The first upgrade holds the lock once the new server it started is running.
    eventually(
        "the slow upgrade started its server",
        Duration::from_secs(10),
        || hang_pid.exists(),
    );
    let second = cli(&["--config", &config, "upgrade"]);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("an upgrade is already in progress"),
        "{}",
        stderr(&second)
    );
    let slow = slow.join().expect("thread");
    assert_eq!(slow.status.code(), Some(1));
    assert!(
        stderr(&slow).contains("not ready within 2s; killed"),
        "{}",
        stderr(&slow)
    );
    let hung: u32 = std::fs::read_to_string(&hang_pid)
        .expect("the hung server ran")
        .trim()
        .parse()
        .expect("pid");
    eventually("the hung server is killed", Duration::from_secs(5), || {
        !alive(hung)
    });

    let samples = load.stop();
    let failures = load::failures(&samples);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(site.pid(), Some(pid));
    assert!(alive(pid), "the old server never stopped");
}

#[test]
fn stale_pid_file_and_missing_pid_file() {
    let site = Site::new();
    assert!(site.usersvc(&["upgrade", "--start"]).status.success());
    let pid = site.pid().expect("pid");
    testbed::signal(pid, libc::SIGKILL);
    eventually("killed", Duration::from_secs(5), || !alive(pid));
    let out = site.usersvc(&["upgrade"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not running"), "{}", stderr(&out));
    let out = site.usersvc(&["upgrade", "--start"]);
    assert!(out.status.success(), "a stale pid file means not running");
    assert_ne!(site.pid(), Some(pid));

    let out = cli(&["upgrade"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("set pid_file in the config file or pass --pid-file"),
        "{}",
        stderr(&out)
    );
}

/// systemd's side, as far as it runs here: `systemd-socket-activate` binds the port and passes it
/// as fd 3 (LISTEN_FDS), and a NOTIFY_SOCKET the test binds receives READY=1 and MAINPID=; an
/// upgrade tells it the new main pid before the old server exits.
#[test]
fn systemd_socket_activation_and_notify() {
    let site = Site::new();
    let notify = site.path("notify.sock");
    let sd = UnixDatagram::bind(&notify).expect("bind NOTIFY_SOCKET");
    sd.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut activate = testbed::Peer::spawn("systemd-socket-activate", {
        let mut c = Command::new("systemd-socket-activate");
        c.arg("-l")
            .arg(site.addr.to_string())
            .arg("-E")
            .arg(format!("NOTIFY_SOCKET={}", notify.display()))
            .arg(site.path("bin/usersvc"))
            .arg("--config")
            .arg(site.path("usersvc.toml"))
            .arg("serve");
        c
    });
    activate.wait_for_line(Duration::from_secs(10), |l| {
        l.contains("Listening on").then_some(())
    });
    // The first connection starts the service, which takes the socket systemd bound.
    assert_eq!(site.version()["result"]["name"], "usersvc");
    // The pid file is written right after the accept loop starts, so it may trail the answer.
    eventually("the pid file", Duration::from_secs(5), || {
        site.pid().is_some()
    });
    let pid = site.pid().expect("pid");
    let mut buf = [0u8; 512];
    let n = sd.recv(&mut buf).expect("READY from the server");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        msg.contains("READY=1") && msg.contains(&format!("MAINPID={pid}")),
        "{msg}"
    );
    // Logged before READY, but through a non-blocking writer and a pipe: it may trail it.
    activate.wait_for_line(Duration::from_secs(10), |l| {
        l.contains("systemd socket").then_some(())
    });

    let load = Load::start(&[site.addr], 2);
    let out = site.usersvc(&["upgrade"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let new = site.pid().expect("pid");
    let mut told = String::new();
    while !told.contains(&format!("MAINPID={new}")) {
        let n = sd.recv(&mut buf).expect("MAINPID of the new server");
        told.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    eventually("the old server exits", Duration::from_secs(10), || {
        !alive(pid)
    });
    let failures = load::failures(&load.stop());
    assert!(failures.is_empty(), "{failures:?}");
}

/// `bin/usersvc` becomes a wrapper that, asked to serve, says `says` on stderr and exits 1 (a
/// release whose start script fails); any other command is usersvc's.
fn broken_server(site: &Site, says: &str) {
    let script = site.path("broken");
    std::fs::write(
        &script,
        format!(
            // exec -a keeps argv[0]: an upgrade starts what the wrapper was started through.
            "#!/bin/bash\ncase \" $* \" in *\" serve \"*) echo '{says}' >&2; exit 1;; esac\nexec -a \"$0\" '{}' \"$@\"\n",
            env!("CARGO_BIN_EXE_usersvc")
        ),
    )
    .expect("write");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    std::fs::remove_file(site.path("bin/usersvc")).expect("remove the release's binary");
    symlink(&script, site.path("bin/usersvc")).expect("link");
}

#[test]
fn a_new_server_that_exits_says_why() {
    let site = Site::new();
    // Nothing running: `upgrade --start` of a server that is not usersvc (a wrapper that fails).
    broken_server(&site, "cannot start: /opt/license.key is missing");
    let out = site.usersvc(&["upgrade", "--start"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot start: /opt/license.key is missing"),
        "{}",
        stderr(&out)
    );
    // A running server replaced by one that fails: the old one serves on, the reason is shown.
    std::fs::remove_file(site.path("bin/usersvc")).expect("rm");
    symlink(env!("CARGO_BIN_EXE_usersvc"), site.path("bin/usersvc")).expect("link");
    assert!(site.usersvc(&["upgrade", "--start"]).status.success());
    let pid = site.pid().expect("pid");
    broken_server(&site, "cannot start: port policy forbids it");
    let out = site.usersvc(&["upgrade"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("the new server failed")
            && err.contains("cannot start: port policy forbids it"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(alive(pid));
}

/// A deploy layout: `releases/<n>/bin/usersvc`, `current` switched to the newest, the config in
/// `shared/` with relative paths. The shipped hook runs from inside the new release, and old
/// releases are removed as cleanup would.
#[test]
fn relative_paths_follow_the_config_file_across_releases() {
    let mut pg = testbed::Postgres::start();
    let site = tempfile::tempdir().expect("temp dir");
    let root = site.path();
    let shared = root.join("shared");
    std::fs::create_dir_all(&shared).expect("mkdir");
    let port = free_port("127.0.0.1");
    std::fs::write(
        shared.join("usersvc.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\ndatabase_url = \"{}\"\njournal = \"usersvc.journal\"\npid_file = \"usersvc.pid\"\nstore_timeout = \"1s\"\nlog_format = \"json\"\n",
            pg.url()
        ),
    )
    .expect("config");
    let agent = testbed::http::agent();
    let call = |body: &str| {
        testbed::http::post(
            &agent,
            &format!("http://127.0.0.1:{port}/"),
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
        .json()
    };
    let keep = 2;
    let mut queued = 0;
    for n in 1..=keep + 2 {
        let release = root.join(format!("releases/{n}"));
        std::fs::create_dir_all(release.join("bin")).expect("mkdir");
        symlink(env!("CARGO_BIN_EXE_usersvc"), release.join("bin/usersvc")).expect("link");
        let tmp = root.join("current.tmp");
        symlink(&release, &tmp).expect("link");
        std::fs::rename(&tmp, root.join("current")).expect("switch");
        // The shipped after_publish hook, run in the release directory.
        let out = Command::new(root.join("current/bin/usersvc"))
            .arg("--config")
            .arg(shared.join("usersvc.toml"))
            .args(["upgrade", "--start"])
            .current_dir(&release)
            .output()
            .expect("hook");
        assert!(out.status.success(), "deploy {n}: {}", stderr(&out));
        if n == 2 {
            // The store goes away: writes are queued by the server of release 2.
            pg.stop();
            for i in 0..5 {
                let r = call(&format!(
                    r#"{{"jsonrpc":"2.0","method":"put_user","params":{{"user":{{"id":"q{i}"}}}},"id":1}}"#
                ));
                assert_eq!(r["result"]["queued"], true, "{r}");
                queued += 1;
            }
        }
        // Cleanup beyond keep_releases, the server's own release included once it is old.
        if n > keep {
            std::fs::remove_dir_all(root.join(format!("releases/{}", n - keep))).expect("rm");
        }
        let pid: u32 = std::fs::read_to_string(shared.join("usersvc.pid"))
            .expect("pid file in shared/")
            .trim()
            .parse()
            .expect("pid");
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd");
        assert_eq!(
            cwd,
            shared,
            "deploy {n}: the server runs in {}",
            cwd.display()
        );
    }
    for name in [
        "usersvc.journal",
        "usersvc.snapshot",
        "usersvc.pid",
        "usersvc.log",
    ] {
        assert!(shared.join(name).exists(), "{name} is not in shared/");
    }
    pg.restart();
    eventually(
        "the queued writes are replayed",
        Duration::from_secs(30),
        || pg.psql("SELECT count(*) FROM users WHERE id LIKE 'q%'") == queued.to_string(),
    );
    let pid = std::fs::read_to_string(shared.join("usersvc.pid")).expect("pid");
    testbed::signal(pid.trim().parse().expect("pid"), libc::SIGKILL);
}
