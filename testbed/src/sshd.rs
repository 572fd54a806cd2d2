//! Real OpenSSH servers on loopback, one per 127.0.0.N address (each behaves as its own host):
//! a fresh host key, a client key authorized for the target user, a known_hosts file with the
//! host's key, and a `deploy_to` directory of its own. Killed on drop.

use crate::process::{Peer, checked, current_user, free_port};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Sshd {
    pub addr: String,
    pub ip: String,
    pub port: u16,
    /// The user that logs in (root, or the current user when not root).
    pub user: String,
    /// Private key authorized for `user`.
    pub identity: PathBuf,
    /// A known_hosts file holding this server's key.
    pub known_hosts: PathBuf,
    /// A directory the user may write, for `deploy_to`.
    pub deploy_root: PathBuf,
    peer: Option<Peer>,
    config: PathBuf,
    /// The network namespace it runs in (`None`: this one).
    netns: Option<String>,
    /// Runs with `deploy_root` mounted over `/srv`.
    own_srv: bool,
    dir: tempfile::TempDir,
}

const OPENSSH: &str =
    "(install OpenSSH with `apt-get install openssh-server openssh-client`; make test does)";

fn run(what: &str, cmd: &mut Command) -> std::process::Output {
    checked(&format!("{what} {OPENSSH}"), cmd.output())
}

fn keygen(path: &Path) {
    run(
        "ssh-keygen",
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(path),
    );
}

/// Makes `user` (created the way PEERS.md says when missing: `useradd -m`, password `*`) the
/// owner of `dir`. Root only.
fn become_owner(user: &str, dir: &Path) {
    assert!(
        crate::process::is_root(),
        "logging in as {user} needs the tests to run as root"
    );
    if !Command::new("id")
        .arg(user)
        .output()
        .is_ok_and(|o| o.status.success())
    {
        run(
            "useradd",
            Command::new("useradd").args(["-m", "-s", "/bin/bash", user]),
        );
        run("usermod", Command::new("usermod").args(["-p", "*", user]));
    }
    run("chown", Command::new("chown").arg("-R").arg(user).arg(dir));
}

impl Sshd {
    /// Starts sshd on `127.0.0.{n}` (n ≥ 1); logins as the user running the tests.
    pub fn start(n: u8) -> Self {
        Self::start_as(n, &current_user())
    }

    /// Starts sshd on `127.0.0.{n}` for logins as `user`, who owns `deploy_root`. As root, a
    /// missing `user` is created the way PEERS.md says (`useradd -m`, password `*`).
    pub fn start_as(n: u8, user: &str) -> Self {
        let mut sshd = Self::prepare(format!("127.0.0.{n}"), user);
        sshd.launch(None);
        sshd
    }

    /// Starts sshd inside `ns`, on its inside address and `port`, for logins as the current
    /// user: a host on a private network.
    pub fn start_in(ns: &crate::netns::Netns, port: u16) -> Self {
        let mut sshd = Self::prepare(ns.inside_ip.clone(), &current_user());
        sshd.netns = Some(ns.name.clone());
        sshd.launch(Some(port));
        sshd
    }

    /// A whole host as a user meets one: sshd inside `ns` on port 22 of its inside address,
    /// for logins as `user`, in a mount namespace where `/srv` is this server's `deploy_root`
    /// (so `deploy_to = "/srv/usersvc"` is this host's own, as on a machine of its own).
    pub fn start_host(ns: &crate::netns::Netns, user: &str) -> Self {
        assert!(
            Path::new("/srv").is_dir(),
            "no /srv to mount a host's own over"
        );
        let mut sshd = Self::prepare(ns.inside_ip.clone(), user);
        sshd.netns = Some(ns.name.clone());
        sshd.own_srv = true;
        sshd.launch(Some(22));
        sshd
    }

    /// Keys, authorized_keys and deploy_root for a server on `ip`, not started yet.
    fn prepare(ip: String, user: &str) -> Self {
        assert!(
            Path::new("/usr/sbin/sshd").exists(),
            "sshd is missing: install it with `apt-get install openssh-server` (make test does)"
        );
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let d = dir.path();
        keygen(&d.join("host_ed25519"));
        keygen(&d.join("client_ed25519"));
        let pubkey =
            std::fs::read_to_string(d.join("client_ed25519.pub")).unwrap_or_else(|e| panic!("{e}"));
        let authorized = d.join("authorized_keys");
        std::fs::write(&authorized, pubkey).unwrap_or_else(|e| panic!("{e}"));
        let deploy_root = d.join("srv");
        std::fs::create_dir_all(&deploy_root).unwrap_or_else(|e| panic!("{e}"));
        // sshd reads these as the target user; keep them readable (StrictModes is off).
        use std::os::unix::fs::PermissionsExt;
        for (path, mode) in [(d, 0o755), (authorized.as_path(), 0o644)] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
        }
        // sshd's privilege separation directory, needed only when it runs as root.
        if crate::process::is_root() {
            std::fs::create_dir_all("/run/sshd").unwrap_or_else(|e| panic!("/run/sshd: {e}"));
        }
        let user = user.to_owned();
        if user != current_user() {
            become_owner(&user, &deploy_root);
        }
        let config = d.join("sshd_config");
        Self {
            addr: String::new(),
            ip,
            port: 0,
            user,
            identity: d.join("client_ed25519"),
            known_hosts: d.join("known_hosts"),
            deploy_root,
            peer: None,
            config,
            netns: None,
            own_srv: false,
            dir,
        }
    }

    /// Starts sshd on `port`, or on a free one.
    fn launch(&mut self, port: Option<u16>) {
        let d = self.dir.path().to_owned();
        self.port = port.unwrap_or_else(|| free_port(&self.ip));
        self.addr = format!("{}:{}", self.ip, self.port);
        let cfg = format!(
            "Port {port}\nListenAddress {ip}\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
             Subsystem sftp /usr/lib/openssh/sftp-server\nLogLevel INFO\n",
            port = self.port,
            ip = self.ip,
            d = d.display()
        );
        std::fs::write(&self.config, cfg).unwrap_or_else(|e| panic!("{e}"));
        run(
            "sshd -t",
            Command::new("/usr/sbin/sshd")
                .arg("-t")
                .arg("-f")
                .arg(&self.config),
        );
        let mut cmd = Command::new("/usr/sbin/sshd");
        cmd.args(["-D", "-e", "-f"]).arg(&self.config);
        if self.own_srv {
            // `ip netns exec` gives it a mount namespace of its own: the bind stays in there.
            cmd = Command::new("sh");
            cmd.arg("-c")
                .arg("mount --bind \"$0\" /srv && exec /usr/sbin/sshd -D -e -f \"$1\"")
                .arg(&self.deploy_root)
                .arg(&self.config);
        }
        if let Some(ns) = &self.netns {
            cmd = crate::netns::wrap_in(ns, &cmd);
        }
        self.peer = Some(Peer::spawn("sshd", cmd));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((self.ip.as_str(), self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd on {} never listened",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let scan = run(
            "ssh-keyscan",
            Command::new("ssh-keyscan").args([
                "-p",
                &self.port.to_string(),
                "-t",
                "ed25519",
                &self.ip,
            ]),
        );
        std::fs::write(&self.known_hosts, scan.stdout).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Kills the server: the host is gone (mid-deploy, for tests).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.peer.take() {
            p.kill_tree();
        }
    }

    /// Gives the host a new key (as a reinstalled or impersonated host would have); the
    /// known_hosts file keeps the old one.
    pub fn change_host_key(&mut self) {
        let saved = std::fs::read(&self.known_hosts).unwrap_or_default();
        self.kill();
        let key = self.dir.path().join("host_ed25519");
        for file in [key.clone(), key.with_extension("pub")] {
            std::fs::remove_file(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
        keygen(&key);
        // Same address and port: known_hosts entries are keyed by [ip]:port.
        self.launch(Some(self.port));
        std::fs::write(&self.known_hosts, saved).unwrap_or_else(|e| panic!("{e}"));
    }

    /// The server's own log (stderr).
    pub fn log(&self) -> String {
        self.peer.as_ref().map(Peer::log).unwrap_or_default()
    }

    /// How many logins (SSH sessions authenticated) the server has seen so far.
    pub fn logins(&self) -> usize {
        self.log().matches("Accepted publickey for ").count()
    }
}
