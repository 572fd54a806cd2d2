//! A private network behind one address: a network namespace joined to this one by a veth
//! pair, `10.a.b.1` on our side and `10.a.b.2` inside. Peers started inside ([`Netns::wrap`])
//! listen on the inside address and reach each other there, while what runs here reaches them
//! only from `10.a.b.1`: the source address a host's `from=` rule tells apart from a bastion's.
//! Needs root (CAP_NET_ADMIN) and iproute2; removed on drop with everything still in it.

use crate::process::{checked, is_root};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Netns {
    pub name: String,
    /// The address of this side of the link.
    pub outside_ip: String,
    /// The address inside the namespace, where its peers listen.
    pub inside_ip: String,
    veth: String,
}

const IPROUTE: &str = "(install iproute2 with `apt-get install iproute2`; make test does)";

fn ip(args: &[&str]) {
    checked(
        &format!("ip {} {IPROUTE}", args.join(" ")),
        Command::new("ip").args(args).output(),
    );
}

impl Netns {
    pub fn start() -> Self {
        assert!(
            is_root(),
            "a network namespace needs root (CAP_NET_ADMIN): run the tests as root, as make test does"
        );
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{:x}{n}", pid & 0xff_ffff);
        let net = format!(
            "10.{}.{}.{}",
            100 + (n % 100),
            (pid >> 6) & 0xff,
            (pid & 0x3f) * 4
        );
        let base: Vec<u32> = net.split('.').filter_map(|x| x.parse().ok()).collect();
        let at = |k: u32| format!("10.{}.{}.{}", base[1], base[2], base[3] + k);
        let ns = Self {
            name: format!("dj{tag}"),
            outside_ip: at(1),
            inside_ip: at(2),
            veth: format!("dj{tag}o"),
        };
        let inside = format!("dj{tag}i");
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link", "add", &ns.veth, "type", "veth", "peer", "name", &inside,
        ]);
        ip(&["link", "set", &inside, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.outside_ip),
            "dev",
            &ns.veth,
        ]);
        ip(&["link", "set", &ns.veth, "up"]);
        let within = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        within(&[
            "addr",
            "add",
            &format!("{}/30", ns.inside_ip),
            "dev",
            &inside,
        ]);
        within(&["link", "set", &inside, "up"]);
        within(&["link", "set", "lo", "up"]);
        ns
    }

    /// What `/etc/hosts` holds for whatever runs inside (`ip netns exec` binds
    /// `/etc/netns/NAME/hosts` over it); removed with the namespace.
    pub fn set_hosts(&self, text: &str) {
        let dir = std::path::Path::new("/etc/netns").join(&self.name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        std::fs::write(dir.join("hosts"), text).unwrap_or_else(|e| panic!("write hosts: {e}"));
    }

    /// `cmd`, to be run inside the namespace.
    pub fn wrap(&self, cmd: &Command) -> Command {
        wrap_in(&self.name, cmd)
    }
}

/// `cmd`, to be run inside the namespace `name` (`ip netns exec` execs it: same pid).
pub fn wrap_in(name: &str, cmd: &Command) -> Command {
    let mut inside = Command::new("ip");
    inside
        .args(["netns", "exec", name])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    inside
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Whatever still runs inside goes first, then the link and the namespace. In a drop,
        // maybe while a failed test unwinds: what is gone already is not an error here.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(&self.name));
    }
}
