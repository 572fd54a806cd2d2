//! Jump hosts (OpenSSH's `ProxyJump`): the `[user@]host[:port]` chain as OpenSSH writes it.
//! The sessions through them are `hub`'s.

/// One hop of a jump chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jump {
    /// `None`: the user the deploy logs in as.
    pub user: Option<String>,
    pub host: String,
    /// `None`: as written without one (22, unless `ssh_config` says otherwise).
    pub port: Option<u16>,
    /// The key for this hop (`ssh_config`'s IdentityFile for it); `None`: the deploy's.
    pub identity: Option<std::path::PathBuf>,
}

impl Jump {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(22)
    }
}

impl std::fmt::Display for Jump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port())
        } else {
            write!(f, "{}:{}", self.host, self.port())
        }
    }
}

/// A jump chain that is not `[user@]host[:port]`, comma-separated.
#[derive(Debug, thiserror::Error)]
#[error("proxy_jump {0:?} is not [user@]host[:port], comma-separated (e.g. \"deploy@bastion:22\")")]
pub struct BadJump(pub String);

/// Parses OpenSSH's ProxyJump syntax: `[user@]host[:port]` hops, comma-separated, each may be
/// written `ssh://…`; `none` (or nothing) is no jump. A port left out is 22.
pub fn parse_jumps(text: &str) -> Result<Vec<Jump>, BadJump> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|hop| parse_hop(hop.trim()))
        .collect::<Option<_>>()
        .ok_or_else(|| BadJump(text.to_owned()))
}

fn parse_hop(hop: &str) -> Option<Jump> {
    let hop = hop.strip_prefix("ssh://").unwrap_or(hop);
    let (user, rest) = match hop.rsplit_once('@') {
        Some((u, r)) if !u.is_empty() => (Some(u.to_owned()), r),
        Some(_) => return None,
        None => (None, hop),
    };
    let (host, port) = super::address::host_port(rest).ok()?;
    let valid = !host.is_empty()
        && !host.starts_with('-')
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c));
    valid.then(|| Jump {
        user,
        host: host.to_owned(),
        port,
        identity: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_chains_parse_as_openssh_writes_them() {
        let chain =
            parse_jumps("deploy@bastion:2222, ssh://inner,ops@[fd00::1]:22").expect("valid");
        assert_eq!(
            chain,
            [
                Jump {
                    user: Some("deploy".into()),
                    host: "bastion".into(),
                    port: Some(2222),
                    identity: None
                },
                Jump {
                    user: None,
                    host: "inner".into(),
                    port: None,
                    identity: None
                },
                Jump {
                    user: Some("ops".into()),
                    host: "fd00::1".into(),
                    port: Some(22),
                    identity: None
                },
            ]
        );
        assert_eq!(chain[2].to_string(), "ops@[fd00::1]:22");
        assert!(parse_jumps("none").expect("none").is_empty());
        for bad in [
            "bastion:http",
            "@bastion",
            "-oProxyCommand=x",
            "a,,b",
            "host:0",
            "[::1",
        ] {
            assert!(parse_jumps(bad).is_err(), "{bad}");
        }
    }
}
