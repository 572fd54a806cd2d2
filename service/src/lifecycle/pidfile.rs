//! The pid file: which process serves, written once it is ready; and the paths that sit beside
//! it (the control socket `upgrade` talks to, the log of a server started by `upgrade --start`).

use std::io::Write;
use std::path::{Path, PathBuf};

/// The control socket of the server whose pid is in `pid_file`: `<pid_file>.ctl`.
pub fn control_path(pid_file: &Path) -> PathBuf {
    sibling(pid_file, ".ctl")
}

/// Where a server started by `upgrade --start` logs: the pid file's name with `.log`.
pub fn log_path(pid_file: &Path) -> PathBuf {
    pid_file.with_extension("log")
}

/// Writes `pid` atomically (`atomic_file`): a reader sees the old pid or the new, whole.
pub fn write(path: &Path, pid: u32) -> std::io::Result<()> {
    crate::atomic_file::write(path, |f| writeln!(f, "{pid}"))
}

/// The pid in the file if that process is alive; `None` when there is no file or its process
/// is gone (a stale file means "not running").
pub fn read_live(path: &Path) -> std::io::Result<Option<u32>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(text.trim().parse::<u32>().ok().filter(|&pid| is_alive(pid)))
}

/// Removes the pid file and the control socket, but only while they are still `pid`'s: after an
/// upgrade they belong to the new server.
pub fn remove_if_ours(path: &Path, pid: u32) {
    let ours = std::fs::read_to_string(path).is_ok_and(|t| t.trim() == pid.to_string());
    if ours {
        let _ = std::fs::remove_file(control_path(path));
        let _ = std::fs::remove_file(path);
    }
}

/// A path next to `path` with `suffix` appended to its name.
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Whether `pid` runs (a zombie does not count).
pub fn is_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    let exists = match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) => true,
        // It exists; it is someone else's.
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    };
    // A zombie (dead, not yet reaped by its parent) answers kill(0) but serves nothing.
    exists
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_stale_and_missing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("usersvc.pid");
        assert_eq!(read_live(&path).expect("read"), None, "no file");
        write(&path, std::process::id()).expect("write");
        assert_eq!(read_live(&path).expect("read"), Some(std::process::id()));
        // A pid that cannot be running (above the kernel's pid_max).
        write(&path, 99_999_999).expect("write");
        assert_eq!(read_live(&path).expect("read"), None, "stale");
        remove_if_ours(&path, 1);
        assert!(path.exists(), "not ours: left alone");
        remove_if_ours(&path, 99_999_999);
        assert!(!path.exists());
        assert_eq!(
            control_path(Path::new("/s/usersvc.pid")),
            Path::new("/s/usersvc.pid.ctl")
        );
        assert_eq!(
            log_path(Path::new("/s/usersvc.pid")),
            Path::new("/s/usersvc.log")
        );
    }
}
