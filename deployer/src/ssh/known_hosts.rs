//! Host keys as OpenSSH keeps them. Both the user's `known_hosts` and the system's
//! `/etc/ssh/ssh_known_hosts` are read; a key marked `@revoked` is refused for any host;
//! `@cert-authority` lines are understood as certificate authorities, not host keys (a host's
//! certificate is not accepted through them: its plain key must be known); host patterns, hashed
//! names and `[host]:port` are libssh2's to match. Adding a key (`--accept-new-host-keys`) takes
//! an exclusive lock beside the file, reads it again (another run may have added the key) and
//! rewrites it atomically with one line more: comments and lines it does not understand are kept.

use base64::Engine;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The system-wide file OpenSSH reads after the user's.
pub const SYSTEM: &str = "/etc/ssh/ssh_known_hosts";

/// What the files say of a host's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Known,
    /// A known host presented another key of the same type.
    Changed,
    /// Marked `@revoked` (in the named file).
    Revoked(PathBuf),
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum KnownHostsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("adding the host key to {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checking the host key: {0}")]
    Check(String),
}

/// One key as OpenSSH writes it: its type name and its base64 blob.
#[derive(Debug, Clone)]
pub struct HostKey<'a> {
    pub blob: &'a [u8],
    pub kind: ssh2::HostKeyType,
}

impl HostKey<'_> {
    fn type_name(&self) -> &'static str {
        match self.kind {
            ssh2::HostKeyType::Rsa => "ssh-rsa",
            ssh2::HostKeyType::Dss => "ssh-dss",
            ssh2::HostKeyType::Ecdsa256 => "ecdsa-sha2-nistp256",
            ssh2::HostKeyType::Ecdsa384 => "ecdsa-sha2-nistp384",
            ssh2::HostKeyType::Ecdsa521 => "ecdsa-sha2-nistp521",
            ssh2::HostKeyType::Ed25519 => "ssh-ed25519",
            ssh2::HostKeyType::Unknown => "unknown",
        }
    }

    fn base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.blob)
    }
}

fn read(path: &Path) -> Result<String, KnownHostsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(KnownHostsError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The key blob of a known_hosts line with a marker (`@revoked host type key`), if it has one.
fn marked(line: &str, marker: &str) -> Option<Vec<u8>> {
    let mut f = line.split_whitespace();
    (f.next()? == marker).then_some(())?;
    let (_hosts, _type, key) = (f.next()?, f.next()?, f.next()?);
    base64::engine::general_purpose::STANDARD.decode(key).ok()
}

/// Judges `key` for `host:port` against `files`, in order.
pub fn check(
    session: &ssh2::Session,
    files: &[&Path],
    host: &str,
    port: u16,
    key: &HostKey<'_>,
) -> Result<Verdict, KnownHostsError> {
    let mut known = session
        .known_hosts()
        .map_err(|e| KnownHostsError::Check(e.to_string()))?;
    for path in files {
        let text = read(path)?;
        for line in text.lines() {
            let line = line.trim();
            if marked(line, "@revoked").is_some_and(|blob| blob == key.blob) {
                return Ok(Verdict::Revoked(path.to_path_buf()));
            }
            if line.is_empty() || line.starts_with('#') || line.starts_with('@') {
                continue;
            }
            // A line libssh2 cannot read (an unknown key type, an odd pattern) is kept in the
            // file and skipped here, as OpenSSH skips it.
            let _ = known.read_str(line, ssh2::KnownHostFileKind::OpenSSH);
        }
    }
    Ok(match known.check_port(host, port, key.blob) {
        ssh2::CheckResult::Match => Verdict::Known,
        ssh2::CheckResult::Mismatch => Verdict::Changed,
        ssh2::CheckResult::NotFound => Verdict::Unknown,
        ssh2::CheckResult::Failure => {
            return Err(KnownHostsError::Check(
                "libssh2 could not compare it".into(),
            ));
        }
    })
}

/// The name a host is written under: `host`, or `[host]:port` off port 22.
pub fn entry_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

/// Adds `key` for `host:port` to `path` unless a run holding the lock meanwhile did: the file
/// is read again under an exclusive lock (`<path>.lock`) and replaced atomically, everything in
/// it kept. Refuses when the file now says the key changed or is revoked.
pub fn add(
    session: &ssh2::Session,
    path: &Path,
    host: &str,
    port: u16,
    key: &HostKey<'_>,
) -> Result<Verdict, KnownHostsError> {
    let write_err = |source| KnownHostsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(write_err)?;
    lock.lock().map_err(write_err)?;
    let verdict = check(session, &[path], host, port, key)?;
    if verdict != Verdict::Unknown {
        return Ok(verdict);
    }
    let mut text = read(path)?;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "{} {} {} added by deployer\n",
        entry_name(host, port),
        key.type_name(),
        key.base64()
    ));
    replace(path, text.as_bytes()).map_err(write_err)?;
    Ok(Verdict::Known)
}

/// Writes `bytes` to a new file beside `path` and renames it over `path`.
fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let mut tmp = tempfile::NamedTempFile::new_in(dir.unwrap_or(Path::new(".")))?;
    if let Ok(meta) = std::fs::metadata(path) {
        tmp.as_file().set_permissions(meta.permissions())?;
    }
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
