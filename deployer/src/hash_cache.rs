//! The SHA-256 of the source's files, remembered on the deploy machine between deploys, so a
//! deploy of a tree where one file changed hashes one file, not the whole tree.
//!
//! As git's index does, an entry is trusted only while the file's size, modification and change
//! times, inode and device are what they were when it was hashed (the change time moves on every
//! write and chmod, and no user can set it back), and an entry is not kept for a file modified
//! in the last few seconds before the cache is written: it may change again within the clock's
//! grain without its times showing it. A cache that cannot be read or written is no cache: the
//! deploy hashes everything, as it would without one.
//!
//! It lives in `$XDG_CACHE_HOME/deployer/` (else `~/.cache/deployer/`), one file per source
//! directory, written atomically and private (0600).

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What a file's metadata said when it was hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    dev: u64,
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }
}

/// Entries modified this recently (seconds) before the cache is written are not kept.
const RACY_SECS: i64 = 2;

pub struct HashCache {
    file: Option<PathBuf>,
    known: HashMap<String, (Stamp, String)>,
    seen: Vec<(String, Stamp, String)>,
    counts: Counts,
    shown: Option<indicatif::ProgressBar>,
}

/// What a scan hashed, and what it took from the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub hashed_files: u64,
    pub hashed_bytes: u64,
    pub cached_files: u64,
}

impl HashCache {
    /// The cache for the tree at `root`, read from its file (empty when there is none).
    pub fn open(root: &Path) -> Self {
        let file = cache_dir().and_then(|d| {
            let root = root.canonicalize().ok()?;
            let key = crate::manifest::sha256_hex(root.as_os_str().as_encoded_bytes());
            Some(d.join(format!("hashes-{}", &key[..16])))
        });
        let known = file
            .as_deref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .map(|text| {
                // Sized once (a line is ~145 bytes): grown as it filled, the map was rehashed
                // and copied a dozen times on the way to 20,000 entries.
                let mut known = HashMap::with_capacity(text.len() / 128);
                known.extend(text.lines().filter_map(parse_line));
                known
            })
            .unwrap_or_default();
        Self {
            file,
            known,
            seen: Vec::new(),
            counts: Counts::default(),
            shown: None,
        }
    }

    /// No cache: every file is hashed (a tree from `git archive`, extracted afresh).
    pub fn none() -> Self {
        Self {
            file: None,
            known: HashMap::new(),
            seen: Vec::new(),
            counts: Counts::default(),
            shown: None,
        }
    }

    /// Counts every byte hashed on `bar` as well.
    pub fn showing(mut self, bar: &indicatif::ProgressBar) -> Self {
        self.shown = Some(bar.clone());
        self
    }

    /// What was hashed so far, and taken from the cache.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The SHA-256 of the file at `rel`, from the cache while its metadata (`stamp`) is
    /// unchanged, else from `hash`.
    pub fn sha256(
        &mut self,
        rel: &str,
        stamp: Stamp,
        hash: impl FnOnce() -> std::io::Result<String>,
    ) -> std::io::Result<String> {
        // Taken out, not cloned: a scan asks for each path once.
        let sha = match self.known.remove(rel) {
            Some((s, sha)) if s == stamp => {
                self.counts.cached_files += 1;
                sha
            }
            _ => {
                let sha = hash()?;
                self.counts.hashed_files += 1;
                self.counts.hashed_bytes += stamp.size;
                if let Some(bar) = &self.shown {
                    bar.inc(stamp.size);
                }
                sha
            }
        };
        if self.file.is_some() && !rel.contains(['\n', '\t']) {
            self.seen.push((rel.to_owned(), stamp, sha.clone()));
        }
        Ok(sha)
    }

    /// [`HashCache::save`] on a thread of its own: 20,000 lines take ~10 ms to write, while
    /// the deploy goes on with the tree. Dropping the returned [`Saving`] waits for it.
    /// With no thread to be had, it is written here and now.
    pub fn save_aside(self) -> Saving {
        let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(self)));
        let taken = slot.clone();
        let take = move || toolkit_core::lock(&taken).take();
        match std::thread::Builder::new()
            .name("hash-cache".into())
            .spawn(move || take().map(HashCache::save))
        {
            Ok(t) => Saving(Some(t)),
            Err(_) => {
                if let Some(c) = toolkit_core::lock(&slot).take() {
                    c.save();
                }
                Saving(None)
            }
        }
    }

    /// Writes what this scan saw (only it: files gone are forgotten), atomically.
    pub fn save(self) {
        let Some(file) = self.file else { return };
        let now = chrono::Utc::now().timestamp();
        let mut text = String::with_capacity(self.seen.len() * 150);
        for (rel, s, sha) in &self.seen {
            if s.mtime.0.max(s.ctime.0) < now - RACY_SECS {
                write_line(&mut text, rel, s, sha);
            }
        }
        // Best effort: a cache that cannot be written only costs the next deploy its hashing.
        let _ = write_private(&file, text.as_bytes());
        forget_unused(file.parent());
    }
}

/// A cache being written; dropped, it waits until the file is in place (or the write failed).
pub struct Saving(Option<std::thread::JoinHandle<Option<()>>>);

impl Drop for Saving {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
    }
}

/// Appends one cache line to `text` (no string of its own: 20,000 of them).
fn write_line(text: &mut String, rel: &str, s: &Stamp, sha: &str) {
    use std::fmt::Write;
    let _ = writeln!(
        text,
        "{sha}\t{}\t{}.{}\t{}.{}\t{}\t{}\t{rel}",
        s.size, s.mtime.0, s.mtime.1, s.ctime.0, s.ctime.1, s.ino, s.dev
    );
}

/// Caches of trees not deployed for 30 days (a checkout removed, a temp dir) are deleted.
fn forget_unused(dir: Option<&Path>) {
    const UNUSED: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);
    let Some(entries) = dir.and_then(|d| std::fs::read_dir(d).ok()) else {
        return;
    };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > UNUSED);
        // `.tmp*`: a write cut short (a second Ctrl-C exits at once) leaves its temp file.
        let name = e.file_name().to_string_lossy().into_owned();
        if old && (name.starts_with("hashes-") || name.starts_with(".tmp")) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The deployer's cache directory: `$XDG_CACHE_HOME/deployer` (an absolute one), else
/// `~/.cache/deployer`; none without a home.
pub fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("deployer"))
}

fn parse_line(line: &str) -> Option<(String, (Stamp, String))> {
    let mut f = line.splitn(7, '\t');
    let sha = f.next()?;
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let size = f.next()?.parse().ok()?;
    let time = |t: &str| -> Option<(i64, i64)> {
        let (s, n) = t.split_once('.')?;
        Some((s.parse().ok()?, n.parse().ok()?))
    };
    let mtime = time(f.next()?)?;
    let ctime = time(f.next()?)?;
    let ino = f.next()?.parse().ok()?;
    let dev = f.next()?.parse().ok()?;
    let rel = f.next()?.to_owned();
    let stamp = Stamp {
        size,
        mtime,
        ctime,
        ino,
        dev,
    };
    Some((rel, (stamp, sha.to_owned())))
}

fn write_private(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // A name of its own (O_EXCL, 0600): two deployers sharing a cache directory with the same
    // pid (two containers' pid 1) would otherwise write one temp file at once.
    let mut f = tempfile::NamedTempFile::new_in(dir)?;
    f.write_all(bytes)?;
    f.persist(file).map(drop).map_err(|e| e.error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_trusted_only_while_the_file_is_unchanged() {
        let dir = tempfile::tempdir().expect("dir");
        let f = dir.path().join("a");
        std::fs::write(&f, "one").expect("write");
        let meta = std::fs::metadata(&f).expect("meta");
        let mut line = String::new();
        write_line(&mut line, "a", &Stamp::of(&meta), &"1".repeat(64));
        let mut c = HashCache {
            file: Some(dir.path().join("cache/hashes")),
            known: line.lines().filter_map(parse_line).collect(),
            seen: Vec::new(),
            counts: Counts::default(),
            shown: None,
        };
        let hashed = |c: &mut HashCache| {
            let meta = std::fs::metadata(&f).expect("meta");
            c.sha256("a", Stamp::of(&meta), || Ok("2".repeat(64)))
                .expect("hash")
        };
        assert_eq!(hashed(&mut c), "1".repeat(64), "unchanged: from the cache");
        // A scan asks for each path once; the next scan reads the cache afresh.
        c.known = line.lines().filter_map(parse_line).collect();
        // Same size, the modification time set back: the change time still moved.
        let mtime = meta.modified().expect("mtime");
        std::fs::write(&f, "two").expect("write");
        std::fs::File::options()
            .write(true)
            .open(&f)
            .and_then(|h| h.set_modified(mtime))
            .expect("mtime");
        assert_eq!(hashed(&mut c), "2".repeat(64), "changed: hashed again");
        let counted = Counts {
            hashed_files: 1,
            hashed_bytes: 3,
            cached_files: 1,
        };
        assert_eq!(c.counts(), counted, "one from the cache, one hashed");
        // Files changed just now are not kept; the file is private.
        c.save();
        let saved = dir.path().join("cache/hashes");
        assert_eq!(std::fs::read_to_string(&saved).expect("saved"), "");
        let mode = std::fs::metadata(&saved).expect("meta").mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(parse_line("xyz\t1\t1.1\t1.1\t1\t1\ta").is_none());
    }
}
