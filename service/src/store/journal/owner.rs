//! The exclusive right to a journal: `flock` on `<journal>.lock`, in a directory no other user
//! can write or owns (whoever could rename the lock aside could start a second server on it).

use super::JournalError;
use crate::atomic_file;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The exclusive right to a journal, held for the life of this value (`flock` on
/// `<journal>.lock`, released by the kernel when the process dies, however it dies).
#[derive(Debug)]
pub struct Owner {
    _lock: nix::fcntl::Flock<File>,
}

/// `<journal>.lock`, `<journal>.quarantine`.
fn beside(journal: &Path, suffix: &str) -> PathBuf {
    let mut p = journal.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Where records that cannot be replayed are kept: `<journal>.quarantine`.
pub fn quarantine_path(journal: &Path) -> PathBuf {
    beside(journal, ".quarantine")
}

/// Refuses a journal directory another user could write, or that another user owns (they could
/// make it writable): whoever can rename `<journal>.lock` aside can start a second server on the
/// same journal, and whoever can create files there can plant records in it.
fn check_directory(journal: &Path) -> Result<(), JournalError> {
    use std::os::unix::fs::MetadataExt;
    let dir = match journal.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(dir).map_err(|source| JournalError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let me = nix::unistd::geteuid().as_raw();
    let why = if meta.uid() != me && meta.uid() != 0 {
        Some(format!("owned by uid {}", meta.uid()))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "writable by other users (mode {:o})",
            meta.mode() & 0o7777
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(JournalError::UnsafeDirectory {
            dir: dir.to_owned(),
            why,
        }),
        None => Ok(()),
    }
}

impl Owner {
    /// Takes the journal's lock without waiting: `Held` (with the holder's pid) when another
    /// process has it; `UnsafeDirectory` when the lock could be taken from under it.
    pub fn acquire(journal: &Path) -> Result<Self, JournalError> {
        use nix::fcntl::{Flock, FlockArg};
        check_directory(journal)?;
        let path = beside(journal, ".lock");
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(atomic_file::PRIVATE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                let pid = format!("{}\n", std::process::id());
                lock.set_len(0)
                    .and_then(|()| lock.rewind())
                    .and_then(|()| lock.write_all(pid.as_bytes()))
                    .map_err(io)?;
                Ok(Self { _lock: lock })
            }
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                Err(JournalError::Held {
                    path: journal.to_owned(),
                    pid: text.trim().parse().ok(),
                })
            }
            Err((_, errno)) => Err(io(std::io::Error::from(errno))),
        }
    }
}
