//! Real peers in front of a server: `stunnel` terminating TLS (optionally requiring a client
//! certificate signed by a given CA) and `tinyproxy`, an HTTP proxy that logs every request and
//! CONNECT it relays. Both run in the foreground with a throwaway config in a temp dir.

use crate::process::{Peer, free_port, require};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn wait_port(peer: &Peer, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} never listened on {port}:\n{}",
            peer.name,
            peer.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// stunnel accepting TLS on `port` and relaying plain TCP to a backend port.
pub struct Stunnel {
    pub peer: Peer,
    pub port: u16,
}

impl Stunnel {
    /// Serves `cert`/`key` in front of 127.0.0.1:`backend`; with `client_ca`, a client must
    /// present a certificate signed by it.
    pub fn start(
        dir: &Path,
        backend: u16,
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Self {
        require("/usr/bin/stunnel4", "stunnel4");
        let port = free_port("127.0.0.1");
        let mut conf = format!(
            "foreground = yes\npid =\ndebug = info\n[rpc]\naccept = 127.0.0.1:{port}\n\
             connect = 127.0.0.1:{backend}\ncert = {}\nkey = {}\n",
            cert.display(),
            key.display()
        );
        if let Some(ca) = client_ca {
            conf.push_str(&format!(
                "CAfile = {}\nverifyChain = yes\nrequireCert = yes\n",
                ca.display()
            ));
        }
        let path = dir.join(format!("stunnel-{port}.conf"));
        std::fs::write(&path, conf).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut cmd = Command::new("/usr/bin/stunnel4");
        cmd.arg(&path);
        let peer = Peer::spawn("stunnel", cmd);
        wait_port(&peer, port);
        Self { peer, port }
    }
}

/// tinyproxy on a free loopback port, relaying anything (CONNECT to any port included).
pub struct Tinyproxy {
    pub peer: Peer,
    pub port: u16,
}

impl Tinyproxy {
    pub fn start(dir: &Path) -> Self {
        require("/usr/bin/tinyproxy", "tinyproxy");
        let port = free_port("127.0.0.1");
        let path = dir.join(format!("tinyproxy-{port}.conf"));
        std::fs::write(
            &path,
            format!("Port {port}\nListen 127.0.0.1\nTimeout 30\nLogLevel Info\nAllow 127.0.0.1\n"),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut cmd = Command::new("/usr/bin/tinyproxy");
        cmd.arg("-d").arg("-c").arg(&path);
        let peer = Peer::spawn("tinyproxy", cmd);
        wait_port(&peer, port);
        Self { peer, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The requests it relayed (`GET http://…`, `CONNECT host:port`), in order.
    pub fn requests(&self) -> Vec<String> {
        self.peer
            .log()
            .lines()
            .filter_map(|l| l.split_once("]: Request (file descriptor "))
            .filter_map(|(_, rest)| rest.split_once("): ").map(|(_, r)| r.to_owned()))
            .collect()
    }
}
