//! A throwaway PostgreSQL cluster: `initdb` into a temp dir, `pg_ctl` on a free loopback port,
//! stopped on drop. `stop` and `start` take the store away and give it back (same data).

use crate::process::{checked, free_port, is_root};
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Postgres {
    bin: PathBuf,
    port: u16,
    running: bool,
    paused: bool,
    // Last: removed after the server stopped.
    dir: tempfile::TempDir,
}

/// The newest installed server's bin directory.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!("PostgreSQL server is missing: install it with `apt-get install postgresql` (make test does, as root)")
    })
}

/// Runs a server tool as the `postgres` user when we are root (initdb refuses root).
fn as_owner(tool: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(tool);
        c
    } else {
        Command::new(tool)
    }
}

/// A temp dir the `postgres` user owns when we are root (initdb and pg_basebackup run as it).
fn owned_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    if is_root() {
        checked(
            "chown postgres",
            Command::new("chown")
                .arg("postgres:")
                .arg(dir.path())
                .output(),
        );
    }
    dir
}

impl Postgres {
    pub fn start() -> Self {
        let bin = bin_dir();
        let dir = owned_tempdir();
        checked(
            "initdb",
            as_owner(&bin.join("initdb"))
                .arg("-D")
                .arg(dir.path().join("data"))
                .args(["-A", "trust", "-U", "postgres", "--no-sync"])
                .output(),
        );
        let mut pg = Self {
            bin,
            port: 0,
            running: false,
            paused: false,
            dir,
        };
        pg.start_on_a_free_port();
        pg
    }

    /// Starts the server on a free port: a port found free can be taken before the server
    /// binds it, so a few are tried.
    fn start_on_a_free_port(&mut self) {
        for attempt in 0..3 {
            self.port = free_port("127.0.0.1");
            match self.try_start() {
                Ok(()) => return,
                Err(e) if attempt == 2 => panic!("pg_ctl start failed:\n{e}"),
                Err(_) => {}
            }
        }
    }

    fn try_start(&mut self) -> Result<(), String> {
        let d = self.dir.path();
        let out = as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(d.join("data"))
            .arg("-l")
            .arg(d.join("server.log"))
            .args(["-w", "-t", "60", "start", "-o"])
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                d.display()
            ))
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            self.running = true;
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(d.join("server.log")).unwrap_or_default()
            ))
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown): clients lose their connections.
    pub fn stop(&mut self) {
        self.stop_with("fast");
    }

    /// Crashes the server (`pg_ctl -m immediate`): no shutdown, as a power cut or OOM kill.
    pub fn crash(&mut self) {
        self.stop_with("immediate");
    }

    fn stop_with(&mut self, mode: &str) {
        if self.running {
            checked(
                &format!("pg_ctl stop -m {mode}"),
                as_owner(&self.bin.join("pg_ctl"))
                    .arg("-D")
                    .arg(self.dir.path().join("data"))
                    .args(["-w", "-m", mode, "stop"])
                    .output(),
            );
            self.running = false;
        }
    }

    /// Stalls the whole server (SIGSTOP on the postmaster and every backend): connections stay
    /// open and nothing answers, as a hung host does. `resume` undoes it.
    pub fn pause(&mut self) {
        self.signal_all(libc::SIGSTOP);
        self.paused = true;
    }

    pub fn resume(&mut self) {
        self.signal_all(libc::SIGCONT);
        self.paused = false;
    }

    fn signal_all(&self, sig: i32) {
        let pid_file = self.dir.path().join("data").join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("{}: {e} (is the server running?)", pid_file.display()));
        let postmaster: u32 = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}: no pid on its first line", pid_file.display()));
        for pid in std::iter::once(postmaster).chain(crate::process::descendants(postmaster)) {
            crate::process::signal(pid, sig);
        }
    }

    /// Starts the same cluster again on the same port.
    pub fn restart(&mut self) {
        if !self.running {
            self.try_start()
                .unwrap_or_else(|e| panic!("pg_ctl start (again) failed:\n{e}"));
        }
    }

    /// A hot standby of this server: `pg_basebackup -R` into a directory of its own, started on
    /// a port of its own, and made synchronous (`synchronous_standby_names = '*'`): from here on a
    /// commit on this server returns only once the standby has it.
    pub fn standby(&self) -> Postgres {
        let dir = owned_tempdir();
        checked(
            "pg_basebackup",
            as_owner(&self.bin.join("pg_basebackup"))
                .args(["-h", "127.0.0.1", "-U", "postgres", "-R", "--no-sync", "-p"])
                .arg(self.port.to_string())
                .arg("-D")
                .arg(dir.path().join("data"))
                .output(),
        );
        let mut standby = Self {
            bin: self.bin.clone(),
            port: 0,
            running: false,
            paused: false,
            dir,
        };
        standby.start_on_a_free_port();
        // ALTER SYSTEM cannot run in the transaction psql makes of several statements.
        self.psql("ALTER SYSTEM SET synchronous_standby_names = '*'");
        self.psql("SELECT pg_reload_conf()");
        crate::process::eventually(
            "the standby is synchronous",
            std::time::Duration::from_secs(30),
            || self.psql("SELECT sync_state FROM pg_stat_replication") == "sync",
        );
        standby
    }

    /// Promotes this standby to primary (`pg_ctl promote`, waiting until it takes writes).
    pub fn promote(&self) {
        checked(
            "pg_ctl promote",
            as_owner(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-w", "promote"])
                .output(),
        );
    }

    /// `ALTER SYSTEM SET name = value` (`None`: RESET), reloaded, and waited for: `pg_reload_conf`
    /// only signals the postmaster, which passes the signal on to every backend later; a write
    /// sent meanwhile on an open connection runs under the old setting. Once a new session sees
    /// the value, every backend has been signalled.
    pub fn set_and_reload(&self, name: &str, value: Option<&str>) {
        match value {
            Some(v) => self.psql(&format!("ALTER SYSTEM SET {name} = '{v}'")),
            None => self.psql(&format!("ALTER SYSTEM RESET {name}")),
        };
        self.psql("SELECT pg_reload_conf()");
        let boot = self.psql(&format!(
            "SELECT COALESCE(boot_val, '') FROM pg_settings WHERE name = '{name}'"
        ));
        let want = value.map_or(boot, str::to_owned);
        crate::process::eventually(
            &format!("{name} = {want:?} reloaded"),
            std::time::Duration::from_secs(10),
            || self.psql(&format!("SHOW {name}")) == want,
        );
    }

    /// Runs SQL with psql; returns unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        let out = checked(
            "psql",
            Command::new(self.bin.join("psql"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-At",
                    "-v",
                    "ON_ERROR_STOP=1",
                ])
                .arg("-p")
                .arg(self.port.to_string())
                .arg("-c")
                .arg(sql)
                .output(),
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.paused {
            self.resume();
        }
        if self.running {
            let _ = as_owner(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-w", "-m", "immediate", "stop"])
                .output();
        }
    }
}
