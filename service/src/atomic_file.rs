//! Files usersvc replaces whole (the journal when it is rewritten, the local snapshot copy, the
//! pid file) are written one way: a temp file beside the target, created exclusively (never an
//! existing file, never through a symlink) and private (0600), filled, fsync'd, renamed over the
//! target, then the directory fsync'd so the rename itself survives a crash. A reader sees the
//! old content or the new, whole; a crash at any point leaves one of them.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Mode of every file usersvc creates: its users' data is nobody else's.
pub const PRIVATE: u32 = 0o600;

/// Replaces `path` with what `fill` writes, atomically and durably.
pub fn write(path: &Path, fill: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let (tmp, mut file) = create_temp(path)?;
    let written = fill(&mut file)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(path)
}

/// As [`write`], for a large file (the local copy's base, ~110 MB at a million users): the old
/// one is kept by a second name until the new one is in place, then shrunk a few MiB at a time
/// before it goes. Freed at once, its blocks went to the disk as one discard in one journal
/// commit, and the write path's fsyncs waited behind it: one writer's p99 right after a restart
/// at 1M users was 4.6-7.9 ms with the old base freed at once, 2.3-2.7 ms with it gone before.
///
/// Not `gentle` (a server stopping, whose successor waits for its journal): replaced at once.
pub fn write_large(
    path: &Path,
    gentle: bool,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    if !gentle {
        return write(path, fill);
    }
    let retired = retired_path(path);
    // One a crash left: the old base, or (a crash before the rename) the live one's other name.
    retire(&retired, path);
    let kept = std::fs::hard_link(path, &retired).is_ok();
    let written = write(path, fill);
    match (kept, &written) {
        (true, Ok(())) => retire(&retired, path),
        // Replaced or not (a failed directory fsync), the old file is not certain to be gone.
        (true, Err(_)) => {
            let _ = std::fs::remove_file(&retired);
        }
        (false, _) => {}
    }
    written
}

/// Where [`write_large`] keeps the file it replaces while it is shrunk.
fn retired_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(
        ".{}.retired",
        name.unwrap_or_else(|| "file".into())
    ))
}

/// Shrinks `retired` a few MiB at a time, resting between steps, then removes it; only removes
/// the name when it is the same file as `live` (a failed or unfinished replace) or has another
/// name anywhere. Best effort: a file it cannot shrink is removed at once.
fn retire(retired: &Path, live: &Path) {
    use std::os::unix::fs::MetadataExt;
    const STEP: u64 = 4 << 20;
    const REST: std::time::Duration = std::time::Duration::from_millis(25);
    let Ok(meta) = std::fs::symlink_metadata(retired) else {
        return;
    };
    let same = |m: &std::fs::Metadata| m.dev() == meta.dev() && m.ino() == meta.ino();
    // Only a plain file is opened: opening a FIFO left under that name would wait for ever.
    let only_unlink = !meta.is_file() || std::fs::symlink_metadata(live).is_ok_and(|m| same(&m));
    if !only_unlink
        && let Ok(file) = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(retired)
        && file.metadata().is_ok_and(|m| same(&m) && m.nlink() == 1)
    {
        let mut size = meta.len();
        while size > 0 {
            size = size.saturating_sub(STEP);
            if file.set_len(size).is_err() {
                break;
            }
            std::thread::sleep(REST);
        }
    }
    let _ = std::fs::remove_file(retired);
}

/// Opens `path` for appending, never through a symlink. When it is missing it is created
/// private (0600) and its directory fsynced, so a record fsynced into the new file survives a
/// power loss with its name.
pub fn open_append(path: &Path) -> io::Result<File> {
    let append = || {
        let mut options = OpenOptions::new();
        options.append(true).custom_flags(libc::O_NOFOLLOW);
        options
    };
    match append().open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        opened => return opened,
    }
    match append().create_new(true).mode(PRIVATE).open(path) {
        Ok(file) => sync_dir(path).map(|()| file),
        // Created meanwhile by someone else: theirs to make durable.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => append().open(path),
        Err(e) => Err(e),
    }
}

/// Takes group and other permissions off an existing file of ours (one left by an older
/// version or another umask). Nothing when it is missing or already private.
pub fn make_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700)) {
            Ok(()) => {
                tracing::info!(file = %path.display(), "made private (0600): it holds users' data")
            }
            Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot make it private"),
        }
    }
}

/// fsyncs the directory holding `path`, so a create or rename in it is durable.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// A new file beside `path` with a name no one can predict and no one else holds.
fn create_temp(path: &Path) -> io::Result<(PathBuf, File)> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    loop {
        let nonce = uuid::Uuid::now_v7().simple().to_string();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_file_name(format!(".{name}.{}.{seq}.{nonce}.tmp", std::process::id()));
        // O_EXCL refuses an existing file and a symlink alike; O_NOFOLLOW says so twice.
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PRIVATE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A large file (the snapshot's local copy: ~110 MB at a million users) written so that its
/// pages never pile up in the page cache: each `CHUNK` written is flushed (fdatasync) before the
/// next, and the writer then rests as long as the flush took. An fsync of another file on the
/// same filesystem (the store's commit, the journal's append: the write path) waits behind
/// whatever of this one is being flushed; a write right after a start at 1M users once took
/// 186 ms at p99 against 5 ms at 1k. With 8 MiB chunks it still took 4.1-5.4 ms against
/// 1.5-1.7 ms with no copy written; with 1 MiB, 2.1-2.5 ms. The rest leaves the disk to the write
/// path half the time and costs little: 110 MB are flushed in ~0.1 s here. The final fsync of
/// [`write`] then has little left to do.
pub struct Paced<'a> {
    file: &'a File,
    unflushed: u64,
    /// Rest after each flush; not for a server stopping, whose successor waits.
    rest: bool,
}

impl<'a> Paced<'a> {
    const CHUNK: u64 = 1 << 20;

    pub fn new(file: &'a File, rest: bool) -> Self {
        Self {
            file,
            unflushed: 0,
            rest,
        }
    }
}

impl io::Write for Paced<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (&*self.file).write(buf)?;
        self.unflushed += n as u64;
        if self.unflushed >= Self::CHUNK {
            let flushing = std::time::Instant::now();
            self.file.sync_data()?;
            if self.rest {
                std::thread::sleep(flushing.elapsed());
            }
            self.unflushed = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self.file).flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn write_bytes(path: &Path, bytes: &[u8]) -> io::Result<()> {
        write(path, |f| f.write_all(bytes))
    }

    #[test]
    fn a_paced_file_is_flushed_every_chunk_and_arrives_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("big");
        let chunk = usize::try_from(Paced::CHUNK).expect("fits");
        let bytes: Vec<u8> = (0..2 * chunk + 3).map(|i| (i % 251) as u8).collect();
        let file = File::create(&path).expect("create");
        let mut paced = Paced::new(&file, true);
        // One byte short of a chunk: nothing flushed yet; the byte that completes it flushes.
        paced.write_all(&bytes[..chunk - 1]).expect("write");
        assert_eq!(paced.unflushed, Paced::CHUNK - 1);
        paced.write_all(&bytes[chunk - 1..chunk]).expect("write");
        assert_eq!(paced.unflushed, 0);
        // The next chunk in odd pieces: flushed when its last byte is written, and the sync
        // covers whatever a write carried past the edge.
        for piece in bytes[chunk..2 * chunk].chunks(1_000_003) {
            paced.write_all(piece).expect("write");
        }
        assert_eq!(paced.unflushed, 0);
        paced.write_all(&bytes[2 * chunk..]).expect("write");
        assert_eq!(paced.unflushed, 3);
        // A write carrying past the edge: flushed, with what it carried beyond counted flushed.
        paced.write_all(&vec![1u8; chunk]).expect("write");
        assert_eq!(paced.unflushed, 0);
        let mut all = bytes.clone();
        all.extend(vec![1u8; chunk]);
        assert_eq!(std::fs::read(&path).expect("read"), all);
    }

    #[test]
    fn a_large_file_replaced_leaves_the_new_one_and_no_other_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("copy");
        let large = |text: &'static [u8]| write_large(&path, true, |f| f.write_all(text));
        large(b"one").expect("first");
        large(b"two").expect("replace");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let names = || -> Vec<_> {
            std::fs::read_dir(dir.path())
                .expect("dir")
                .flatten()
                .map(|e| e.file_name())
                .collect()
        };
        assert_eq!(names(), ["copy"]);
        // A crash before the rename left the live file's other name: only the name goes.
        std::fs::hard_link(&path, retired_path(&path)).expect("link");
        let failed = write_large(&path, true, |_| Err(io::Error::other("full")));
        assert!(failed.is_err());
        assert_eq!(
            std::fs::read(&path).expect("read"),
            b"two",
            "the live file untouched"
        );
        assert_eq!(names(), ["copy"]);
        // A server stopping replaces it at once, the same way.
        write_large(&path, false, |f| f.write_all(b"fast")).expect("replace");
        assert_eq!(
            (std::fs::read(&path).expect("read"), names()),
            (b"fast".to_vec(), vec!["copy".into()])
        );
        // A FIFO under the retired name is removed, never opened (that would wait for ever).
        nix::unistd::mkfifo(&retired_path(&path), nix::sys::stat::Mode::S_IRWXU).expect("fifo");
        large(b"four").expect("replace");
        assert_eq!(names(), ["copy"]);
        // A crash after it left the old file: shrunk and gone.
        std::fs::write(retired_path(&path), vec![7u8; 9 << 20]).expect("old");
        large(b"three").expect("replace");
        assert_eq!(
            (std::fs::read(&path).expect("read"), names()),
            (b"three".to_vec(), vec!["copy".into()])
        );
    }

    #[test]
    fn replaces_whole_private_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        write_bytes(&path, b"one").expect("write");
        write_bytes(&path, b"two").expect("rewrite");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, PRIVATE);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f")], "no temp left");
    }

    #[test]
    fn a_failed_fill_keeps_the_old_content() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        write_bytes(&path, b"old").expect("write");
        let failed = write(&path, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).expect("read"), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
    }

    #[test]
    fn a_symlink_planted_at_the_target_is_replaced_not_followed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").expect("victim");
        let path = dir.path().join("f");
        std::os::unix::fs::symlink(&victim, &path).expect("link");
        write_bytes(&path, b"ours").expect("write");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"keep");
        assert!(!std::fs::symlink_metadata(&path).expect("meta").is_symlink());
    }
}
