//! What the user's OpenSSH client config (`[ssh] ssh_config`, opt-in) says about a host:
//! `HostName`, `User`, `Port`, `IdentityFile` and `ProxyJump`, read by the ssh2-config crate
//! with OpenSSH's rules (the first value found for a key wins; `Host` patterns and `Include`
//! honoured; keys it does not know are ignored). The deploy config wins over all of them.

use std::path::{Path, PathBuf};

pub struct SshConfigFile(ssh2_config::SshConfig);

/// The values a config gives one host name; `None` where it says nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Said {
    pub host_name: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub identity: Option<PathBuf>,
    /// The chain as OpenSSH writes it, comma-separated.
    pub proxy_jump: Option<String>,
}

impl SshConfigFile {
    /// Reads and parses `path`: a file that is missing or wrong is an error, not an empty config.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        refuse_what_we_would_misread(&text)
            .map_err(|(line, why)| format!("{}:{line}: {why}", path.display()))?;
        let mut reader = std::io::Cursor::new(text);
        ssh2_config::SshConfig::default()
            .parse(&mut reader, ssh2_config::ParseRule::ALLOW_UNKNOWN_FIELDS)
            .map(Self)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// What the config says for `host` (as written in the deploy config).
    pub fn query(&self, host: &str) -> Said {
        let p = self.0.query(host);
        Said {
            host_name: p.host_name.filter(|h| !h.is_empty()),
            port: p.port,
            user: p.user,
            identity: p.identity_file.and_then(|f| f.into_iter().next()),
            proxy_jump: p
                .proxy_jump
                .map(|hops| hops.join(","))
                .filter(|j| !j.is_empty()),
        }
    }
}

/// Lines whose meaning would be lost: the parser skips `Match` (its body would then belong to
/// the `Host` above it) and `ProxyCommand` (the host would be reached directly), and no `%`
/// token is expanded. Better refused, naming the line, than a deploy to the wrong place.
fn refuse_what_we_would_misread(text: &str) -> Result<(), (usize, &'static str)> {
    for (i, line) in text.lines().enumerate() {
        let mut words = line
            .split(|c: char| c.is_whitespace() || c == '=')
            .filter(|w| !w.is_empty());
        let Some(key) = words.next().map(str::to_ascii_lowercase) else {
            continue;
        };
        let why = match key.as_str() {
            k if k.starts_with('#') => continue,
            "match" => {
                "Match blocks are not supported here: use Host blocks, or set these hosts in deploy.toml"
            }
            "proxycommand" => {
                "ProxyCommand is not supported here: use ProxyJump (or [ssh] proxy_jump)"
            }
            "hostname" | "user" | "identityfile" | "proxyjump" | "port" if line.contains('%') => {
                "%-tokens are not expanded here: write the value out, or set it in deploy.toml"
            }
            _ => continue,
        };
        return Err((i + 1, why));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_keys_we_use_first_match_wins() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "Host app*\n  HostName 10.0.0.5\n  Port 2222\n  User deploy\n  IdentityFile /keys/app\n  ProxyJump ops@bastion:22,inner\n  ForwardAgent yes\n\nHost *\n  User nobody\n  Port 22\n",
        )
        .expect("write");
        let cfg = SshConfigFile::read(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            cfg.query("app1"),
            Said {
                host_name: Some("10.0.0.5".into()),
                port: Some(2222),
                user: Some("deploy".into()),
                identity: Some("/keys/app".into()),
                proxy_jump: Some("ops@bastion:22,inner".into()),
            }
        );
        let other = cfg.query("db1");
        assert_eq!(
            (other.user.as_deref(), other.host_name),
            (Some("nobody"), None)
        );
        assert!(SshConfigFile::read(&dir.path().join("missing")).is_err());
        for (text, want) in [
            (
                "Host a\n  User x\nMatch host prod-*\n  User root\n",
                ":3: Match",
            ),
            (
                "Host a\n  ProxyCommand ssh -W %h:%p gw\n",
                ":2: ProxyCommand",
            ),
            ("Host a\n  HostName %h.internal\n", ":2: %-tokens"),
        ] {
            std::fs::write(&path, text).expect("write");
            let e = SshConfigFile::read(&path).err().expect("refused");
            assert!(e.contains(want), "{e}");
        }
    }
}
