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
        let file = std::fs::File::open(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut reader = std::io::BufReader::new(file);
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
    }
}
