//! `host[:port]` and `[v6]:port`, as deploy.toml's `address` and OpenSSH's ProxyJump write a
//! host: one reading for both. A bare IPv6 address (several colons, no brackets) is a host
//! without a port.

/// What is wrong with an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadAddress {
    /// An unclosed `[`, or text after `]` that is not `:port`.
    Shape,
    /// A port that is not a number from 1 to 65535.
    Port,
}

/// The host and, when written, the port.
pub fn host_port(text: &str) -> Result<(&str, Option<u16>), BadAddress> {
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or(BadAddress::Port)
    };
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(BadAddress::Shape)?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((host, Some(port(p)?))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(BadAddress::Shape),
        };
    }
    match text.rsplit_once(':') {
        Some((host, p)) if !host.contains(':') => Ok((host, Some(port(p)?))),
        _ => Ok((text, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_ports_and_v6() {
        assert_eq!(host_port("app1"), Ok(("app1", None)));
        assert_eq!(host_port("app1:2222"), Ok(("app1", Some(2222))));
        assert_eq!(host_port("[fd00::1]:22"), Ok(("fd00::1", Some(22))));
        assert_eq!(host_port("[fd00::1]"), Ok(("fd00::1", None)));
        assert_eq!(host_port("fd00::1"), Ok(("fd00::1", None)));
        assert_eq!(host_port("app1:0"), Err(BadAddress::Port));
        assert_eq!(host_port("app1:ssh"), Err(BadAddress::Port));
        assert_eq!(host_port("[::1"), Err(BadAddress::Shape));
        assert_eq!(host_port("[::1]x"), Err(BadAddress::Shape));
    }
}
