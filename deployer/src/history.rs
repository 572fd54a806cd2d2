//! The deploy machine's own record of deploys and rollbacks (`deployer history`): one JSON line
//! each in `$XDG_STATE_HOME/deployer/history` (default `~/.local/state/deployer/history`; the
//! directory 0700, the file 0600): when, who, which application and stage, what was published
//! on which hosts, and the outcome. The hosts keep their own logs (`.deploy/log`,
//! `revisions.log`); this one answers "what did we ship, and from here?" without reaching a
//! host. Writing it never fails a deploy: the caller turns an error into a warning.

use crate::outcome::{Outcome, Unfinished};
use crate::remote_text::printable;
use crate::report::Report;
use crate::table::table;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One deploy or rollback, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// RFC 3339, UTC.
    pub at: String,
    pub user: String,
    pub application: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// `deploy` or `rollback`.
    pub command: String,
    /// The release published, or gone back to (several when hosts went to different ones).
    pub release: String,
    pub revision: String,
    pub hosts: Vec<String>,
    /// `ok` or `failed`.
    pub outcome: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("no history file: neither XDG_STATE_HOME nor HOME is set")]
    NoHome,
    #[error("cannot write the deploy history {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the deploy history {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the history is kept.
pub fn path() -> Result<PathBuf, HistoryError> {
    let state = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").ok_or(HistoryError::NoHome)?)
            .join(".local/state"),
    };
    Ok(state.join("deployer/history"))
}

impl Entry {
    fn new(application: &str, stage: Option<&str>, command: &str) -> Self {
        Entry {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            user: local_user(),
            application: application.to_owned(),
            stage: stage.map(str::to_owned),
            command: command.to_owned(),
            release: String::new(),
            revision: String::new(),
            hosts: Vec::new(),
            outcome: String::new(),
        }
    }

    /// What a deploy's report says.
    pub fn of_deploy(application: &str, stage: Option<&str>, report: &Report) -> Self {
        Entry {
            release: report.release.clone(),
            revision: report.revision.clone(),
            hosts: report.hosts.iter().map(|h| h.name.clone()).collect(),
            outcome: if report.ok { "ok" } else { "failed" }.to_owned(),
            ..Entry::new(application, stage, "deploy")
        }
    }

    /// A rollback to `releases` (each host's) on `hosts`.
    pub fn of_rollback(
        application: &str,
        stage: Option<&str>,
        hosts: Vec<String>,
        releases: Vec<String>,
        ok: bool,
    ) -> Self {
        let mut releases = releases;
        releases.sort();
        releases.dedup();
        Entry {
            release: releases.join(","),
            hosts,
            outcome: if ok { "ok" } else { "failed" }.to_owned(),
            ..Entry::new(application, stage, "rollback")
        }
    }
}

/// Who runs this: `$USER`, else the password database's name for this uid, else the uid.
fn local_user() -> String {
    let uid = nix::unistd::getuid();
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            nix::unistd::User::from_uid(uid)
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| uid.to_string())
}

/// Appends `entry` to the history at [`path`].
pub fn record(entry: &Entry) -> Result<(), HistoryError> {
    append(&path()?, entry)
}

/// Appends `entry` to the history at `path` (made 0700/0600 when missing), in one write.
pub fn append(path: &Path, entry: &Entry) -> Result<(), HistoryError> {
    let io = |source| HistoryError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    let mut line = serde_json::to_vec(entry).map_err(|e| io(e.into()))?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(io)?;
    // A file made looser by hand (or by an older tool) is made private again.
    if file.metadata().map_err(io)?.permissions().mode() & 0o077 != 0 {
        let private = std::fs::Permissions::from_mode(0o600);
        file.set_permissions(private).map_err(io)?;
    }
    file.write_all(&line).map_err(io)
}

/// The last `limit` entries of `application` (and `stage`, when given), oldest first, and how
/// many lines could not be read. Reads line by line: a long history costs `limit` entries.
pub fn read(
    path: &Path,
    application: &str,
    stage: Option<&str>,
    limit: usize,
) -> Result<History, HistoryError> {
    let mut history = History {
        entries: VecDeque::with_capacity(limit.min(1024)),
        unreadable: 0,
        path: path.to_owned(),
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(history),
        Err(source) => {
            return Err(HistoryError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut lines = Lines {
        reader: std::io::BufReader::new(file),
        buf: Vec::new(),
    };
    let read_error = |source| HistoryError::Read {
        path: path.to_owned(),
        source,
    };
    while let Some(line) = lines.next_line().map_err(read_error)? {
        let Some(entry) = line.and_then(|l| serde_json::from_slice::<Entry>(l).ok()) else {
            history.unreadable += 1;
            continue;
        };
        if entry.application == application
            && stage.is_none_or(|s| entry.stage.as_deref() == Some(s))
        {
            if history.entries.len() == limit {
                history.entries.pop_front();
            }
            history.entries.push_back(entry);
        }
    }
    Ok(history)
}

/// A line of the history is at most this long; a longer one is skipped, never held whole.
const MAX_LINE: u64 = 64 * 1024;

/// The lines of a file, each bounded by [`MAX_LINE`].
struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
}

impl<R: BufRead> Lines<R> {
    /// The next line: `Some(None)` for one too long (skipped to its end), `None` at the end.
    fn next_line(&mut self) -> std::io::Result<Option<Option<&[u8]>>> {
        self.buf.clear();
        let n = (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(None);
        }
        if n as u64 == MAX_LINE && !self.buf.ends_with(b"\n") {
            loop {
                self.buf.clear();
                let n = (&mut self.reader)
                    .take(MAX_LINE)
                    .read_until(b'\n', &mut self.buf)?;
                if n == 0 || self.buf.ends_with(b"\n") {
                    return Ok(Some(None));
                }
            }
        }
        Ok(Some(Some(&self.buf)))
    }
}

/// `deployer history`: the entries shown, oldest first.
pub struct History {
    pub entries: VecDeque<Entry>,
    /// Lines that are not entries (a torn write, another tool's).
    pub unreadable: usize,
    pub path: PathBuf,
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.entries.is_empty() {
            write!(f, "no deploys recorded in {}", self.path.display())?;
        } else {
            let mut rows = vec![
                [
                    "WHEN", "USER", "STAGE", "COMMAND", "RELEASE", "REVISION", "OUTCOME", "HOSTS",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for e in &self.entries {
                let revision: String = e.revision.chars().take(12).collect();
                rows.push(
                    [
                        e.at.as_str(),
                        &e.user,
                        e.stage.as_deref().unwrap_or("-"),
                        &e.command,
                        &e.release,
                        &revision,
                        &e.outcome,
                        &e.hosts.join(", "),
                    ]
                    .map(|v| printable(v).into_owned())
                    .to_vec(),
                );
            }
            write!(f, "{}", table(&rows))?;
        }
        if self.unreadable > 0 {
            write!(f, "\n({} unreadable lines skipped)", self.unreadable)?;
        }
        Ok(())
    }
}

impl Outcome for History {
    fn verdict(&self) -> Result<(), Unfinished> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entry(app: &str, stage: Option<&str>, release: &str) -> Entry {
        Entry {
            release: release.to_owned(),
            revision: "0123456789abcdef".to_owned(),
            hosts: vec!["app1".to_owned(), "app2".to_owned()],
            outcome: "ok".to_owned(),
            ..Entry::new(app, stage, "deploy")
        }
    }

    #[test]
    fn entries_are_appended_privately_and_read_back_per_application_and_stage() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("state/deployer/history");
        for (app, stage, release) in [
            ("usersvc", Some("production"), "1"),
            ("other", None, "2"),
            ("usersvc", Some("staging"), "3"),
            ("usersvc", Some("production"), "4"),
        ] {
            append(&path, &entry(app, stage, release)).expect("append");
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"{\"torn\n"))
            .expect("a torn line");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("dir")), 0o700);

        let all = read(&path, "usersvc", None, 10).expect("read");
        let releases: Vec<&str> = all.entries.iter().map(|e| e.release.as_str()).collect();
        assert_eq!(releases, ["1", "3", "4"]);
        assert_eq!(all.unreadable, 1);
        let last = read(&path, "usersvc", Some("production"), 1).expect("read");
        assert_eq!(last.entries.len(), 1);
        assert_eq!(last.entries[0].release, "4");
        let shown = all.to_string();
        assert!(shown.contains("production  deploy   4"), "{shown}");
        assert!(
            shown.contains("0123456789ab  ok"),
            "the revision shortened: {shown}"
        );
        assert!(shown.ends_with("(1 unreadable lines skipped)"), "{shown}");
        // A line just under the limit is an entry like any other.
        let mut near = entry("usersvc", None, "4b");
        let pad = MAX_LINE as usize - serde_json::to_vec(&near).expect("json").len() - 1;
        near.revision.push_str(&"f".repeat(pad));
        append(&path, &near).expect("a line of MAX_LINE bytes, newline included");
        assert_eq!(
            read(&path, "usersvc", None, 10)
                .expect("read")
                .entries
                .back(),
            Some(&near)
        );
        // A line over the limit is skipped, never held whole; what follows it is read.
        let long = format!(
            "{{\"application\":\"{}\"}}\n",
            "x".repeat(MAX_LINE as usize)
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(long.as_bytes()))
            .expect("a long line");
        // Made looser by hand: the next append makes it private again.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        append(&path, &entry("usersvc", None, "5")).expect("append");
        assert_eq!(mode(&path), 0o600);
        let after = read(&path, "usersvc", None, 10).expect("read");
        assert_eq!(after.unreadable, 2, "the torn line and the long one");
        assert_eq!(after.entries.back().map(|e| e.release.as_str()), Some("5"));
        let none = read(&dir.path().join("missing"), "usersvc", None, 5).expect("no file yet");
        assert!(none.to_string().starts_with("no deploys recorded in "));
    }
}
