//! Copies of hosts' live manifests, kept on the deploy machine by their SHA-256, so a host
//! whose live manifest the deployer already holds answers with its hash (64 bytes) instead of
//! the manifest (~140 bytes a file: 2.9 MB for 20,000 files, seconds on a slow link).
//!
//! The deployer offers the sums of the copies it holds; a host whose own `sha256sum` of its
//! live manifest is one of them says so and sends nothing more. Correctness rests on the host's
//! hash alone: a copy is read only if its bytes still hash to its name (a file on disk is input
//! too), and what the deployer learns of a host's next manifest is only a guess that either
//! matches the host's next hash or is never used.
//!
//! Copies come from two places: a listing the host streamed (saved once per content, whatever
//! the number of hosts), and, after staging, the manifest the host now has, made here as the
//! host made it (sent whole, or the live one's kept lines and the lines sent). They live in
//! `$XDG_CACHE_HOME/deployer/manifests/<application key>/` (0700; files 0600, written
//! atomically); the newest [`KEEP`] of each application stay.

use crate::delta::{Known, KnownReader};
use crate::manifest::{Manifest, hex};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// How many copies of one application's manifests are kept and offered: a few releases to
/// roll back to, on hosts of a few stages.
pub const KEEP: usize = 8;
/// A copy larger than this is not read (the limit on a host's whole answer); past this many
/// bytes in all, only the newest copy is kept.
const MAX_BYTES: u64 = 1 << 30;

/// The copies this run can use, and what it learned of them so far.
pub struct LiveManifests {
    shelf: Arc<Shelf>,
    /// What each copy says of the new release, read once for every host that holds it.
    known: Mutex<HashMap<String, Arc<OnceLock<Option<Known>>>>>,
}

/// Where the copies are, which this run offered, and which it writes: those are never pruned
/// by this run (another host may be about to name them).
struct Shelf {
    dir: Option<PathBuf>,
    offered: Vec<String>,
    /// [`MAX_BYTES`], but in tests.
    max_bytes: u64,
    /// Copies written (or being written) by this run: each content once.
    written: Mutex<HashSet<String>>,
}

impl LiveManifests {
    /// The copies of `application`'s manifests in the user's cache directory (none when it
    /// has no home). Each application has its own: a host is offered the sums of its own
    /// application's manifests only, and one application's deploys never push out another's.
    pub fn open(application: &str) -> Self {
        let key = crate::manifest::sha256_hex(application.as_bytes());
        Self::at(crate::hash_cache::cache_dir().map(|d| d.join("manifests").join(&key[..16])))
    }

    pub fn at(dir: Option<PathBuf>) -> Self {
        Self::holding(dir, MAX_BYTES)
    }

    /// The copies in `dir`, none read past `max_bytes`, nor kept past it in all.
    fn holding(dir: Option<PathBuf>, max_bytes: u64) -> Self {
        let offered = dir.as_deref().map(newest).unwrap_or_default();
        let offered = within(offered, max_bytes);
        Self {
            shelf: Arc::new(Shelf {
                dir,
                offered,
                max_bytes,
                written: Mutex::default(),
            }),
            known: Mutex::default(),
        }
    }

    /// The sums of the copies held, newest first: 64 hex digits each, safe unquoted.
    pub fn offered(&self) -> &[String] {
        &self.shelf.offered
    }

    /// What the copy `sum` says of `new`, as if the host had streamed it; `None` when it cannot
    /// be read. One that no longer hashes to its name is removed.
    pub fn known(&self, sum: &str, new: &Manifest) -> Option<Known> {
        let cell = lock(&self.known).entry(sum.to_owned()).or_default().clone();
        cell.get_or_init(|| {
            let path = self.shelf.path(sum)?;
            let mut reader = KnownReader::new(new);
            let max = self.shelf.max_bytes;
            match read_lines(&path, sum, max, &mut |l| reader.manifest_line(l)) {
                Ok(()) => {
                    // Used: it stays among the newest.
                    let _ = std::fs::File::options()
                        .append(true)
                        .open(&path)
                        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                    Some(reader.finish())
                }
                // Only a damaged copy goes; one another process pruned meanwhile, or that could
                // not be opened, is left alone.
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    let _ = std::fs::remove_file(&path);
                    None
                }
                Err(_) => None,
            }
        })
        .clone()
    }

    /// A writer for the listing a host is about to stream, whose hash it said is `sum`; `None`
    /// when another host's stream of it is being kept. (A host streams a manifest the deployer
    /// offered only when the copy could not be read: it is made anew.)
    pub fn copy(&self, sum: &str) -> Option<Copy> {
        let dir = self.shelf.dir.as_deref()?;
        if !lock(&self.shelf.written).insert(sum.to_owned()) {
            return None;
        }
        Some(Copy {
            out: Writer::new(dir).ok(),
            sum: sum.to_owned(),
            first: true,
            shelf: self.shelf.clone(),
            kept: false,
        })
    }

    /// The host took the new manifest whole: `bytes` is what it now has.
    pub fn learn_whole(&self, bytes: &[u8]) {
        let Some(dir) = self.shelf.dir.as_deref() else {
            return;
        };
        let sum = crate::manifest::sha256_hex(bytes);
        if self.offered().contains(&sum) || !lock(&self.shelf.written).insert(sum) {
            return;
        }
        let _ = Writer::new(dir).and_then(|mut w| {
            w.write(bytes)?;
            w.keep(None, &self.shelf)
        });
    }

    /// The host made the new manifest from its live one, `old`: the lines not `dropped` (line
    /// numbers, ascending), then the lines `sent` makes; as its awk does (each kept line ends
    /// in a newline).
    pub fn learn_rebuilt(&self, old: &str, dropped: &[u32], sent: impl FnOnce() -> Vec<u8>) {
        let (Some(dir), Some(path)) = (self.shelf.dir.as_deref(), self.shelf.path(old)) else {
            return;
        };
        // Every host that had `old` drops the same lines: the new copy is made once.
        if !lock(&self.shelf.written).insert(format!("from {old}")) {
            return;
        }
        let _ = Writer::new(dir).and_then(|mut w| {
            let mut n = 0u32;
            read_records(&path, old, self.shelf.max_bytes, &mut |line| {
                n += 1;
                if dropped.binary_search(&n).is_err() {
                    w.write(line)?;
                    w.write(b"\n")?;
                }
                Ok(())
            })?;
            w.write(&sent())?;
            w.keep(None, &self.shelf)
        });
    }
}

impl Shelf {
    fn path(&self, sum: &str) -> Option<PathBuf> {
        let dir = self.dir.as_deref()?;
        sum_ok(sum).then(|| dir.join(sum))
    }

    /// Removes, from one listing of the directory, the copies past the newest [`KEEP`] (or
    /// past its byte limit in all, the newest always kept: [`within`]) that this run neither
    /// offered nor wrote, and temp files a write cut short left an hour ago or more.
    fn prune(&self, dir: &Path) {
        let written = lock(&self.written).clone();
        let copies = newest(dir);
        let names: Vec<String> = copies.iter().map(|(n, _)| n.clone()).collect();
        let keep = within(copies, self.max_bytes);
        for name in names {
            if !keep.contains(&name) && !self.offered.contains(&name) && !written.contains(&name) {
                let _ = std::fs::remove_file(dir.join(name));
            }
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let stale = e.file_name().to_string_lossy().starts_with(".tmp")
                && e.metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > 3600);
            if stale {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// A streamed listing being kept: its lines as they arrive, in place once the whole of it
/// hashes to the sum the host said. Dropped unkept (the step failed, the hash differed), its
/// sum is free again: another host's stream of it may be kept.
pub struct Copy {
    out: Option<Writer>,
    sum: String,
    first: bool,
    shelf: Arc<Shelf>,
    kept: bool,
}

impl Copy {
    /// One line of the host's `cat` of its manifest, then `echo`: the file is the lines joined
    /// by newlines.
    pub fn line(&mut self, line: &[u8]) {
        if let Some(w) = self.out.as_mut() {
            let sep: &[u8] = if self.first { b"" } else { b"\n" };
            self.first = false;
            if w.write(sep).and_then(|()| w.write(line)).is_err() {
                self.out = None;
            }
        }
    }

    /// The listing ended whole: the copy takes its place when it hashes to the host's sum.
    pub fn keep(mut self) {
        if let Some(w) = self.out.take() {
            self.kept = w.keep(Some(&self.sum), &self.shelf).is_ok();
        }
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        if !self.kept {
            lock(&self.shelf.written).remove(&self.sum);
        }
    }
}

/// A copy being written: a temp file of its own (0600) in the copies' directory, hashed as it
/// is written, renamed to its sum at the end.
struct Writer {
    file: io::BufWriter<tempfile::NamedTempFile>,
    hash: Sha256,
}

impl Writer {
    fn new(dir: &Path) -> io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        Ok(Self {
            file: io::BufWriter::new(tempfile::NamedTempFile::new_in(dir)?),
            hash: Sha256::new(),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hash.update(bytes);
        self.file.write_all(bytes)
    }

    /// Renames the file to its sum (when it is `expected`, if given), then prunes `shelf`.
    fn keep(self, expected: Option<&str>, shelf: &Shelf) -> io::Result<()> {
        let sum = hex(&self.hash.finalize());
        if expected.is_some_and(|e| e != sum) {
            return Err(io::Error::other("the copy does not hash to the host's sum"));
        }
        let file = self.file.into_inner().map_err(|e| e.into_error())?;
        // The time now, exactly: a file's own times come from a coarser clock, and the newest
        // copies are told apart by it.
        file.as_file().set_modified(std::time::SystemTime::now())?;
        let dir = file.path().parent().map(Path::to_path_buf);
        let dir = dir.ok_or_else(|| io::Error::other("no directory"))?;
        file.persist(dir.join(&sum)).map_err(|e| e.error)?;
        shelf.prune(&dir);
        Ok(())
    }
}

/// The copies in `dir`, newest first, with their metadata.
fn newest(dir: &Path) -> Vec<(String, std::fs::Metadata)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut copies: Vec<(std::time::SystemTime, String, std::fs::Metadata)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok().filter(|n| sum_ok(n))?;
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, name, meta))
        })
        .collect();
    copies.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
    copies.into_iter().map(|(_, n, m)| (n, m)).collect()
}

/// The names of the newest [`KEEP`] of `copies` (newest first) that fit in `max_bytes` in all;
/// the newest always.
fn within(copies: Vec<(String, std::fs::Metadata)>, max_bytes: u64) -> Vec<String> {
    let mut total = 0;
    copies
        .into_iter()
        .enumerate()
        .take_while(|(i, (_, meta))| {
            total += meta.len();
            *i < KEEP && (*i == 0 || total <= max_bytes)
        })
        .map(|(_, (name, _))| name)
        .collect()
}

/// Hands `on_line` the lines of the copy at `path` as the host's `cat FILE; echo` would stream
/// them (a last empty line when the file ends with a newline), once the whole file hashes to
/// `sum`. Nothing is handed before: a damaged copy says nothing.
fn read_lines(path: &Path, sum: &str, max: u64, on_line: &mut dyn FnMut(&[u8])) -> io::Result<()> {
    let mut ended = true;
    read_verified(path, sum, max, &mut |chunk| {
        ended = chunk.ends_with(b"\n");
        on_line(chunk.strip_suffix(b"\n").unwrap_or(chunk));
        Ok(())
    })?;
    if ended {
        on_line(b"");
    }
    Ok(())
}

/// Hands `on_record` each line of the copy at `path` as awk reads it (no last empty record
/// after a final newline), once the whole file hashes to `sum`.
fn read_records(
    path: &Path,
    sum: &str,
    max: u64,
    on_record: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    read_verified(path, sum, max, &mut |chunk| {
        on_record(chunk.strip_suffix(b"\n").unwrap_or(chunk))
    })
}

/// Hands `on_chunk` the copy at `path` line by line, each with its newline (the last may have
/// none), once the whole file (no more than `max` bytes) hashes to `sum`: read twice, the
/// second time from the same open file, so memory stays a line's.
fn read_verified(
    path: &Path,
    sum: &str,
    max: u64,
    on_chunk: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(path)?;
    if f.metadata()?.len() > max {
        return Err(io::Error::other("too large"));
    }
    let mut hash = Sha256::new();
    io::copy(&mut (&mut f).take(max), &mut hash)?;
    if hex(&hash.finalize()) != sum {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the copy does not hash to its name",
        ));
    }
    f.rewind()?;
    let mut reader = io::BufReader::with_capacity(64 * 1024, f.take(max));
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line)? > 0 {
        on_chunk(&line)?;
        line.clear();
    }
    Ok(())
}

/// 64 lowercase hex digits.
pub fn sum_ok(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::Delta;
    use crate::layout::{HostState, LiveListing, StateReader};

    const CURRENT: &[u8] = b"current=20261123100002";

    /// A tree of three files, and a manifest of it.
    fn tree() -> (tempfile::TempDir, Manifest) {
        let dir = tempfile::tempdir().expect("dir");
        for f in ["a", "b", "c"] {
            std::fs::write(dir.path().join(f), f).expect("write");
        }
        let none = crate::manifest::Exclude::new(dir.path(), &[]).expect("none");
        let m = Manifest::scan(dir.path(), &none).expect("scan");
        (dir, m)
    }

    /// What a host whose live manifest is `live` answers to `copies`' offer, read against `new`.
    fn answer(copies: &LiveManifests, new: &Manifest, live: &[u8]) -> HostState {
        let listing = LiveListing::new(new, copies);
        let sum = crate::manifest::sha256_hex(live);
        let mut r = StateReader::new(Some(listing));
        r.line(CURRENT);
        if listing.sums().contains(&sum) {
            r.line(format!("manifest-known:{sum}").as_bytes());
        } else {
            r.line(format!("manifest-sha256:{sum}").as_bytes());
            r.line(b"manifest:");
            // `cat FILE; echo`, split into lines: the file's lines, and an empty one after a
            // last newline.
            live.split(|&b| b == b'\n').for_each(|l| r.line(l));
        }
        r.finish().expect("trusted")
    }

    fn delta(new: &Manifest, st: &HostState) -> (usize, Option<Vec<u32>>) {
        let d = Delta::new(new, st.known.as_ref(), &[]);
        (d.link, d.rebuild.map(|r| r.dropped))
    }

    /// A listing that was streamed is kept; the next time the host names it, and what the
    /// deployer reads from its copy is what it read from the stream, to the line numbers.
    #[test]
    fn a_listing_streamed_once_is_then_known_by_its_hash() {
        let (_src, m) = tree();
        let dir = tempfile::tempdir().expect("dir");
        let with_newline = m.to_lines();
        let without = with_newline[..with_newline.len() - 1].to_vec();
        for live in [with_newline, without] {
            let sum = crate::manifest::sha256_hex(&live);
            let first = LiveManifests::at(Some(dir.path().into()));
            let streamed = answer(&first, &m, &live);
            assert!(!streamed.listed_from_copy);
            assert_eq!(streamed.manifest_sum.as_deref(), Some(sum.as_str()));
            let second = LiveManifests::at(Some(dir.path().into()));
            assert_eq!(second.offered()[0], sum);
            let kept = answer(&second, &m, &live);
            assert!(kept.listed_from_copy && !kept.copy_lost);
            assert_eq!(delta(&m, &kept), delta(&m, &streamed));
            assert_eq!(delta(&m, &kept).0, 3, "every file linked");
        }
    }

    /// A copy is input: one that no longer hashes to its name is not read, but removed, and
    /// the host is asked for its listing again.
    #[test]
    fn a_damaged_copy_is_not_believed() {
        let (_src, m) = tree();
        let dir = tempfile::tempdir().expect("dir");
        let live = m.to_lines();
        let sum = crate::manifest::sha256_hex(&live);
        LiveManifests::at(Some(dir.path().into())).learn_whole(&live);
        let mut damaged = live.clone();
        damaged[10] ^= 1;
        std::fs::write(dir.path().join(&sum), damaged).expect("damage");
        let copies = LiveManifests::at(Some(dir.path().into()));
        let st = answer(&copies, &m, &live);
        assert!(st.listed_from_copy && st.copy_lost && st.known.is_none());
        assert!(!dir.path().join(&sum).exists(), "removed");
        // Asked again without the offer, the host streams it, and the copy is made anew.
        let again = answer(&LiveManifests::at(Some(dir.path().into())), &m, &live);
        assert_eq!(delta(&m, &again).0, 3);
        assert_eq!(std::fs::read(dir.path().join(&sum)).ok(), Some(live));
    }

    /// A host that says the deployer holds a manifest it was not offered is refused; a stream
    /// that does not hash to the sum the host said is not kept.
    #[test]
    fn what_the_host_says_of_sums_is_checked() {
        let (_src, m) = tree();
        let dir = tempfile::tempdir().expect("dir");
        let copies = LiveManifests::at(Some(dir.path().into()));
        let mut r = StateReader::new(Some(LiveListing::new(&m, &copies)));
        r.line(CURRENT);
        r.line(format!("manifest-known:{}", "a".repeat(64)).as_bytes());
        let refused = r.finish().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("which it was not offered"), "{refused}");
        let mut r = StateReader::new(Some(LiveListing::new(&m, &copies)));
        r.line(CURRENT);
        r.line(format!("manifest-sha256:{}", "b".repeat(64)).as_bytes());
        r.line(b"manifest:");
        m.to_lines().split(|&b| b == b'\n').for_each(|l| r.line(l));
        assert_eq!(delta(&m, &r.finish().expect("trusted")).0, 3);
        assert!(newest(dir.path()).is_empty(), "nothing kept");
    }

    /// Only the newest copies stay, and those this run offered (a host may be about to name
    /// them): the next run prunes those.
    #[test]
    fn the_newest_copies_are_kept() {
        let dir = tempfile::tempdir().expect("dir");
        for n in 0..KEEP + 3 {
            let copies = LiveManifests::at(Some(dir.path().into()));
            copies.learn_whole(format!("{n}\n").as_bytes());
        }
        let count = std::fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(count, KEEP + 1, "the newest, and the oldest offered");
        let offered = LiveManifests::at(Some(dir.path().into()))
            .offered()
            .to_vec();
        let sum = |n: usize| crate::manifest::sha256_hex(format!("{n}\n").as_bytes());
        assert_eq!(offered.len(), KEEP);
        assert_eq!(offered[0], sum(KEEP + 2), "newest first");
        assert!(!offered.contains(&sum(2)));
    }

    /// A copy of exactly the byte limit is read; one byte over, it is not, and it stays (it is
    /// not damaged). Past the limit in all, only the newest copy is kept.
    #[test]
    fn the_byte_limit_is_a_copys_and_the_shelfs() {
        let (_src, m) = tree();
        let live = m.to_lines();
        let sum = crate::manifest::sha256_hex(&live);
        let size = live.len() as u64;
        for (max, read) in [(size, true), (size - 1, false)] {
            let dir = tempfile::tempdir().expect("dir");
            LiveManifests::at(Some(dir.path().into())).learn_whole(&live);
            let copies = LiveManifests::holding(Some(dir.path().into()), max);
            assert_eq!(copies.known(&sum, &m).is_some(), read, "limit {max}");
            assert!(dir.path().join(&sum).exists(), "limit {max}: kept");
        }
        let dir = tempfile::tempdir().expect("dir");
        for n in 0..3 {
            LiveManifests::holding(Some(dir.path().into()), 3)
                .learn_whole(format!("{n}\n").as_bytes());
        }
        let sum = |n: usize| crate::manifest::sha256_hex(format!("{n}\n").as_bytes());
        let kept: Vec<String> = newest(dir.path()).into_iter().map(|(n, _)| n).collect();
        // Two bytes a copy, three in all: the newest, and the one this run offered (the one
        // before it was pruned when it was written).
        assert_eq!(kept, [sum(2), sum(1)]);
        let offered = LiveManifests::holding(Some(dir.path().into()), 3);
        assert_eq!(offered.offered(), [sum(2)], "what fits is offered");
    }
}
