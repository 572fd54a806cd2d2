//! Which hosts a command acts on (`--hosts`, `--role`), each resolved into a `Target`: where to
//! connect, where to deploy, and the names its Riemann events may carry.

use super::{Config, SelectError};
use crate::ssh::Route;

/// One host, resolved: where to connect and where to deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The address as written in the config (used to name the host in output).
    pub name: String,
    /// What is connected to (`HostName` from `ssh_config` when it names one).
    pub host: String,
    pub port: u16,
    pub deploy_to: String,
    pub roles: Vec<String>,
    /// The user, key and jump hosts for this host when they are not `[ssh]`'s.
    pub route: Route,
    /// The host names its events may carry in Riemann (`riemann_host`, else its names).
    pub event_hosts: Vec<String>,
}

impl Config {
    /// The hosts to act on: all, or those named in `names` and/or having `role`.
    pub fn targets(
        &self,
        names: &[String],
        role: Option<&str>,
    ) -> Result<Vec<Target>, SelectError> {
        for n in names {
            if !self.hosts.iter().any(|h| {
                &h.address == n
                    || &h.reach.host == n
                    || self
                        .split_address(&h.address)
                        .is_ok_and(|(host, _)| &host == n)
            }) {
                return Err(SelectError::UnknownHost {
                    name: n.clone(),
                    known: self.listed(self.hosts.iter().map(|h| h.address.as_str())),
                });
            }
        }
        let mut out = Vec::new();
        for h in &self.hosts {
            let (alias, _) = self.split_address(&h.address)?;
            let named = names.is_empty()
                || names
                    .iter()
                    .any(|n| n == &h.address || n == &alias || n == &h.reach.host);
            let has_role = role.is_none_or(|r| h.roles.iter().any(|x| x == r));
            if named && has_role {
                out.push(Target {
                    name: h.address.clone(),
                    host: h.reach.host.clone(),
                    port: h.reach.port,
                    deploy_to: h
                        .deploy_to
                        .clone()
                        .unwrap_or_else(|| self.deploy_to.clone()),
                    roles: h.roles.clone(),
                    route: h.reach.route.clone(),
                    event_hosts: event_hosts(h.riemann_host.as_deref(), &[&alias, &h.reach.host]),
                });
            }
        }
        if out.is_empty() {
            let roles = self
                .hosts
                .iter()
                .flat_map(|h| h.roles.iter().map(String::as_str));
            return Err(SelectError::NoneMatch {
                roles: self.listed(roles),
            });
        }
        Ok(out)
    }

    /// `names`, each once, in order, at most 20 of them: for an error message.
    fn listed<'a>(&self, names: impl Iterator<Item = &'a str>) -> String {
        let mut seen: Vec<&str> = Vec::new();
        for n in names {
            if !seen.contains(&n) {
                seen.push(n);
            }
        }
        let more = seen.len().saturating_sub(20);
        seen.truncate(20);
        let mut text = seen.join(", ");
        if more > 0 {
            text.push_str(&format!(" and {more} more"));
        }
        if text.is_empty() {
            text.push_str("none");
        }
        text
    }
}

/// The names a host's events may carry: `riemann_host` when the config gives it, else each name
/// the host is known by and, for a DNS name, its first label (usersvc's default is the
/// machine's hostname, often the short name).
fn event_hosts(riemann_host: Option<&str>, names: &[&str]) -> Vec<String> {
    if let Some(h) = riemann_host {
        return vec![h.to_owned()];
    }
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let short = match n.parse::<std::net::IpAddr>() {
            Ok(_) => None,
            Err(_) => n.split('.').next(),
        };
        for name in std::iter::once(*n).chain(short) {
            if !name.is_empty() && !out.iter().any(|o| o == name) {
                out.push(name.to_owned());
            }
        }
    }
    out
}
