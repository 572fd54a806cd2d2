//! What the user's OpenSSH client config (`[ssh] ssh_config`, opt-in) says about a host:
//! `HostName`, `User`, `Port`, `IdentityFile` and `ProxyJump`, read by the ssh2-config crate
//! with OpenSSH's rules (the first value found for a key wins; `Host` patterns honoured; keys it
//! does not know are ignored). The deploy config wins over all of them.
//!
//! `Include` is walked here, as OpenSSH walks it (globs, `~`, paths relative to `~/.ssh`, at
//! most 16 deep, a pattern matching nothing ignored), and every included file gets the same
//! refusals as the top one: a `ProxyCommand` or `Match` the parser would skip is an error naming
//! its file and line, wherever it is, never a host reached another way than the user's config
//! says.

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
    /// Reads and parses `path` and the files it includes: a file that is missing or wrong is
    /// an error, not an empty config.
    pub fn read(path: &Path) -> Result<Self, String> {
        let mut text = String::new();
        inline(path, 0, &mut text)?;
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

/// How deep `Include`s may nest (OpenSSH's `READCONF_MAX_DEPTH`).
const MAX_DEPTH: usize = 16;

/// Appends `path`'s lines to `out` with each `Include` replaced by the files it names, checking
/// every file. An `Include` is honoured where it applies to every host (the top level, or
/// `Host *`), and refused inside another `Host` block (OpenSSH reads it only for that block's
/// hosts, which inlining cannot say). After an included file, `Host *` is written again:
/// OpenSSH returns to the including file's context, where a `Host` line inside the included
/// file would otherwise still be in force.
fn inline(path: &Path, depth: usize, out: &mut String) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "{}: Include nested more than {MAX_DEPTH} deep (does a file include itself?)",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    refuse_what_we_would_misread(&text)
        .map_err(|(line, why)| format!("{}:{line}: {why}", path.display()))?;
    let mut host_line = "Host *".to_owned();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let (key, args) = trimmed
            .split_once(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or((trimmed, ""));
        match key.to_ascii_lowercase().as_str() {
            "include" if !host_line.trim().eq_ignore_ascii_case("host *") => {
                return Err(format!(
                    "{}:{}: an Include inside a Host block applies only to that block's hosts, which is not supported here: move it to the top of the file",
                    path.display(),
                    i + 1
                ));
            }
            "include" => {
                let patterns = shlex::split(args.trim()).ok_or_else(|| {
                    format!("{}:{}: unbalanced quotes in Include", path.display(), i + 1)
                })?;
                for pattern in patterns {
                    for file in included(&pattern, path, i + 1)? {
                        inline(&file, depth + 1, out)?;
                    }
                }
                out.push_str("Host *\n");
            }
            k => {
                if k == "host" {
                    host_line = line.to_owned();
                }
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    Ok(())
}

/// The files an `Include` pattern names, sorted, as OpenSSH finds them: `~` is the home
/// directory, a relative path is under `~/.ssh`, and a pattern matching nothing names none.
fn included(pattern: &str, from: &Path, line: usize) -> Result<Vec<PathBuf>, String> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let full = match (pattern.strip_prefix("~/"), &home) {
        (Some(rest), Some(h)) => h.join(rest),
        _ if Path::new(pattern).is_absolute() => PathBuf::from(pattern),
        _ => match &home {
            Some(h) => h.join(".ssh").join(pattern),
            None => {
                return Err(format!(
                    "{}:{line}: Include {pattern:?} is relative to ~/.ssh, and HOME is not set",
                    from.display()
                ));
            }
        },
    };
    let text = full.to_str().ok_or_else(|| {
        format!(
            "{}:{line}: Include {pattern:?} is not UTF-8",
            from.display()
        )
    })?;
    let matches = glob::glob(text)
        .map_err(|e| format!("{}:{line}: Include {pattern:?}: {e}", from.display()))?;
    let mut files: Vec<PathBuf> = matches
        .filter_map(Result::ok)
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
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

    #[test]
    fn includes_are_walked_and_refused_alike() {
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("conf.d")).expect("mkdir");
        let path = d.join("config");
        let write = |p: &str, text: &str| std::fs::write(d.join(p), text).expect("write");
        // An included Host block, then the including file's own context again.
        write(
            "conf.d/10-app",
            "Host app*\n  User deploy\n  ProxyJump ops@bastion\n",
        );
        write("conf.d/20-db", "Host db*\n  User postgres\n");
        write(
            "config",
            &format!(
                "Include \"{}/missing-*\"\nInclude {}/conf.d/*\nHost web\n  Port 2222\nHost *\n  User everyone\n",
                d.display(),
                d.display()
            ),
        );
        let cfg = SshConfigFile::read(&path).unwrap_or_else(|e| panic!("{e}"));
        let app = cfg.query("app1");
        assert_eq!(app.user.as_deref(), Some("deploy"));
        assert_eq!(app.proxy_jump.as_deref(), Some("ops@bastion"));
        let web = cfg.query("web");
        assert_eq!(
            (web.port, web.user.as_deref()),
            (Some(2222), Some("everyone"))
        );
        assert_eq!(cfg.query("db1").user.as_deref(), Some("postgres"));
        assert_eq!(cfg.query("other").user.as_deref(), Some("everyone"));

        // Inside a Host block an Include is conditional in OpenSSH: refused, not misread.
        write(
            "inner",
            &format!("Host web\n  Include {}/conf.d/*\n", d.display()),
        );
        let e = SshConfigFile::read(&d.join("inner"))
            .err()
            .expect("refused");
        assert!(e.contains("inner:2: an Include inside a Host block"), "{e}");

        // What the top file may not say, an included one may not either.
        write("conf.d/30-jump", "Host *\n  ProxyCommand ssh -W %h:%p gw\n");
        let e = SshConfigFile::read(&path).err().expect("refused");
        assert!(e.contains("conf.d/30-jump:2: ProxyCommand"), "{e}");
        write("conf.d/30-jump", "Match host prod-*\n  User root\n");
        let e = SshConfigFile::read(&path).err().expect("refused");
        assert!(e.contains("conf.d/30-jump:1: Match"), "{e}");

        // A file that includes itself.
        write("config", &format!("Include {}\n", path.display()));
        let e = SshConfigFile::read(&path).err().expect("refused");
        assert!(e.contains("nested more than 16"), "{e}");
    }
}
