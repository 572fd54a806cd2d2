//! Where and how each host is reached: its own `[[hosts]]` entry, then `[ssh]`, then the user's
//! OpenSSH config (opt-in), the jump chain resolved; and how an address is split.

use super::{Config, Problem, Reach, expand_home};
use crate::ssh::{BadAddress, Route, SshConfigFile, parse_jumps};

impl Config {
    /// Where and how each host is reached: its own entry, then `[ssh]`, then `ssh_config`.
    pub(super) fn resolve_reach(&mut self) -> Result<(), Problem> {
        let file = match &self.ssh.ssh_config {
            Some(path) => Some(SshConfigFile::read(path).map_err(Problem::SshConfig)?),
            None => None,
        };
        let said = |host: &str| file.as_ref().map(|f| f.query(host)).unwrap_or_default();
        let mut reaches = Vec::with_capacity(self.hosts.len());
        for h in &self.hosts {
            let (alias, port) = self.split_address(&h.address)?;
            let s = said(&alias);
            let chain = h
                .proxy_jump
                .as_deref()
                .or(self.ssh.proxy_jump.as_deref())
                .or(s.proxy_jump.as_deref())
                .unwrap_or("");
            let from_file = h.proxy_jump.is_none() && self.ssh.proxy_jump.is_none();
            let mut jumps =
                parse_jumps(chain).map_err(|e| match (from_file, &self.ssh.ssh_config) {
                    (true, Some(path)) => Problem::SshConfig(format!(
                        "{}: the ProxyJump for {alias}: {e}",
                        path.display()
                    )),
                    _ => Problem::Jump(e),
                })?;
            // Jump hosts are looked up too, as OpenSSH does; what the chain says wins.
            for j in &mut jumps {
                let js = said(&j.host);
                j.user = j.user.take().or(js.user);
                j.port = j.port.or(js.port);
                j.identity = js.identity.map(|p| expand_home(&p));
                if let Some(name) = js.host_name {
                    j.host = name;
                }
            }
            reaches.push(Reach {
                host: s.host_name.unwrap_or(alias),
                port: port.or(self.ssh.port).or(s.port).unwrap_or(22),
                route: Route {
                    user: self.ssh.user.is_none().then_some(s.user).flatten(),
                    identity: self
                        .ssh
                        .identity
                        .is_none()
                        .then(|| s.identity.map(|p| expand_home(&p)))
                        .flatten(),
                    jumps,
                },
            });
        }
        for (h, reach) in self.hosts.iter_mut().zip(reaches) {
            h.reach = reach;
        }
        Ok(())
    }

    /// `[v6]:port`, `host:port` or a bare host; the port only when written.
    pub(super) fn split_address(&self, address: &str) -> Result<(String, Option<u16>), Problem> {
        match crate::ssh::host_port(address) {
            Ok((host, port)) => Ok((host.to_owned(), port)),
            Err(BadAddress::Port) => Err(Problem::Port(address.to_owned())),
            Err(BadAddress::Shape) => Err(Problem::Address(address.to_owned())),
        }
    }
}
