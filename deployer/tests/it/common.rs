//! Hosts for deployer tests: real sshd servers on 127.0.0.N sharing one client key and one
//! known_hosts file, a source tree, and a deploy.toml pointing at them.

use std::path::{Path, PathBuf};
use std::process::Command;
use testbed::sshd::Sshd;

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The deployer's history goes beside the test's config, never into the user's own.
pub fn state_home(config: &Path) -> PathBuf {
    config.parent().unwrap_or(Path::new(".")).join("state")
}

/// The deployer's history and its hash cache beside the test's config (`Command::envs`): a test
/// leaves nothing in the user's own state and cache directories.
pub fn homes(config: &Path) -> [(&'static str, PathBuf); 2] {
    let beside = config.parent().unwrap_or(Path::new("."));
    [
        ("XDG_STATE_HOME", state_home(config)),
        ("XDG_CACHE_HOME", beside.join("cache")),
    ]
}

pub fn deployer(config: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_deployer"))
        .arg("-c")
        .arg(config)
        .args(args)
        .envs(homes(config))
        .output()
        .expect("run deployer");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Starts `deployer -c config args…` without waiting, output captured (for tests that act on
/// the hosts while it runs). Killed if the test ends first (a failed assertion), so no deployer
/// outlives its test holding connections open.
pub fn spawn_deployer(config: &Path, args: &[&str]) -> Running {
    Running(Some(
        Command::new(env!("CARGO_BIN_EXE_deployer"))
            .arg("-c")
            .arg(config)
            .args(args)
            .envs(homes(config))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start deployer"),
    ))
}

/// A deployer started by [`spawn_deployer`].
pub struct Running(Option<std::process::Child>);

impl Running {
    /// Waits for it to end and collects its output.
    pub fn wait_with_output(mut self) -> std::process::Output {
        self.0
            .take()
            .expect("running")
            .wait_with_output()
            .expect("wait for deployer")
    }
}

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("running")
    }
}

/// `len` bytes that do not compress (xorshift64 from `seed`): a file whose transfer fills the
/// channel windows and socket buffers, where a few small packets would not.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_mut().expect("running")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // In a drop, maybe while a failed test unwinds: an error here (it exited already)
            // must not turn that failure into an abort.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub struct Hosts {
    pub servers: Vec<Sshd>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub source: PathBuf,
    deploy_dirs: Vec<PathBuf>,
}

impl Hosts {
    /// sshd on each `127.0.0.{n}`, logging in as the test user.
    pub fn start(ips: &[u8]) -> Self {
        Self::start_as(ips, &testbed::process::current_user())
    }

    pub fn start_as(ips: &[u8], user: &str) -> Self {
        Self::with_servers(ips.iter().map(|&n| Sshd::start_as(n, user)).collect())
    }

    /// Hosts on servers already started: the first one's client key logs in to all.
    pub fn with_servers(servers: Vec<Sshd>) -> Self {
        let key = std::fs::read_to_string(servers[0].identity.with_extension("pub")).expect("key");
        for s in &servers[1..] {
            std::fs::write(s.known_hosts.with_file_name("authorized_keys"), &key).expect("auth");
        }
        let dir = tempfile::tempdir().expect("dir");
        let known: String = servers
            .iter()
            .map(|s| std::fs::read_to_string(&s.known_hosts).expect("known_hosts"))
            .collect();
        std::fs::write(dir.path().join("known_hosts"), known).expect("known_hosts");
        let source = dir.path().join("dist");
        std::fs::create_dir_all(&source).expect("source");
        let deploy_dirs = servers.iter().map(|s| s.deploy_root.join("app")).collect();
        let config = dir.path().join("deploy.toml");
        let h = Self {
            servers,
            dir,
            config,
            source,
            deploy_dirs,
        };
        h.configure("", "");
        h
    }

    /// Writes deploy.toml: `top` holds top-level keys, `tables` extra tables ([hooks], …).
    pub fn configure(&self, top: &str, tables: &str) {
        self.configure_hosts(top, tables, &|_| String::new());
    }

    /// As [`Hosts::configure`], with `per_host(i)`'s keys in host `i`'s `[[hosts]]` table.
    pub fn configure_hosts(&self, top: &str, tables: &str, per_host: &dyn Fn(usize) -> String) {
        let s0 = &self.servers[0];
        let mut text = format!(
            "application = \"usersvc\"\ndeploy_to = \"/unused\"\nsource = \"dist\"\n{top}\n[ssh]\nuser = \"{}\"\nidentity = \"{}\"\nknown_hosts = \"known_hosts\"\n",
            s0.user,
            s0.identity.display()
        );
        for (i, (s, d)) in self.servers.iter().zip(&self.deploy_dirs).enumerate() {
            text.push_str(&format!(
                "[[hosts]]\naddress = \"{}\"\nroles = [\"app\"]\ndeploy_to = '''{}'''\n{}",
                s.addr,
                d.display(),
                per_host(i)
            ));
        }
        text.push_str(tables);
        std::fs::write(&self.config, text).expect("deploy.toml");
    }

    /// Uses a deploy_to with a space and a quote on every host.
    pub fn awkward_deploy_dirs(&mut self) {
        self.deploy_dirs = self
            .servers
            .iter()
            .map(|s| s.deploy_root.join("my app's home"))
            .collect();
        self.configure("", "");
    }

    pub fn run(&self, args: &[&str]) -> Run {
        deployer(&self.config, args)
    }

    /// Deploys and insists it worked.
    pub fn deploy_ok(&self) -> Run {
        let r = self.run(&["deploy"]);
        assert_eq!(r.code, 0, "{r}");
        r
    }

    pub fn deploy_to(&self, i: usize) -> &Path {
        &self.deploy_dirs[i]
    }

    pub fn current(&self, i: usize) -> Option<String> {
        let link = std::fs::read_link(self.deploy_to(i).join("current")).ok()?;
        Some(link.file_name()?.to_str()?.to_owned())
    }

    /// The revision host `i`'s `current` release holds.
    pub fn revision(&self, i: usize) -> String {
        std::fs::read_to_string(self.deploy_to(i).join("current/REVISION"))
            .expect("REVISION")
            .trim()
            .to_owned()
    }

    pub fn releases(&self, i: usize) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.deploy_to(i).join("releases"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn locked(&self, i: usize) -> bool {
        self.deploy_to(i).join(".deploy/lock").exists()
    }

    /// The deployer's own log of host `i` (`.deploy/log`), parsed.
    pub fn log(&self, i: usize) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.deploy_to(i).join(".deploy/log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect(".deploy/log holds JSON lines"))
            .collect()
    }

    /// revisions.log of host `i`: Capistrano's text lines.
    pub fn revisions_log(&self, i: usize) -> Vec<String> {
        std::fs::read_to_string(self.deploy_to(i).join("revisions.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn write(&self, path: &str, content: &str) {
        let p = self.source.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
    }
}
