//! The upload of one release to one host: a single tar stream, extracted by GNU tar in
//! `deploy_to`. Changed files travel whole; unchanged ones are tar hard-link entries pointing
//! into the current release (no data sent, no extra disk used); the manifest travels last, so a
//! host only has the manifest of a release whose files all arrived. Behind it, the script that
//! finishes staging (shared links, REVISION) travels as `.deploy/staged-<pid>-<time>.sh` and
//! runs once tar has extracted everything: the upload and the staging end are one remote step.

use crate::manifest::{Delta, Entry, Kind, Manifest};
use std::io::{self, Read, Write};
use std::path::Path;

/// The remote half: extracts the stream in `deploy_to` as the SSH user (no owners from the
/// stream, modes kept); tar's stderr goes to a temp file so it can never stall the stream. It
/// starts before the lock step (to overlap session start-up), so it creates `deploy_to` itself.
/// Then it runs the staging script the stream carried (an old one is removed first: a stream
/// that ends before its script is cut short, [`STREAM_CUT`]); a failure of that script exits
/// [`STAGED_FAILED`] (tar's own exits are 1 and 2). Every output goes through a temp file, at
/// most 4000 bytes of it to stderr, so none can stall the channel; the script never stays.
pub fn remote_command(deploy_to: &str) -> String {
    format!(
        "e=$(mktemp) || exit 1; mkdir -p {d} && cd {d} && rm -f {st} && tar -x -p --no-same-owner -f - 2>\"$e\"; s=$?; head -c 4000 \"$e\" >&2
if [ $s -ne 0 ]; then rm -f \"$e\" {st}; exit $s; fi
if [ ! -f {st} ]; then rm -f \"$e\"; echo 'the stream ended before its staging script: cut short' >&2; exit {STREAM_CUT}; fi
sh {st} >\"$e\" 2>&1; s=$?; head -c 4000 \"$e\" >&2; rm -f \"$e\" {st}; [ $s -eq 0 ] || exit {STAGED_FAILED}",
        d = crate::ssh::quote(deploy_to),
        st = staged_path()
    )
}

/// Where this process's staging script travels, relative to `deploy_to`: a name of its own
/// (pid and start time), since the upload's command starts before the lock is taken, and a
/// deploy locked out must never touch the script of the one that holds the lock.
pub fn staged_path() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!(".deploy/staged-{}-{nanos:x}.sh", std::process::id())
    })
}
/// The upload's exit status when the staging script failed.
pub const STAGED_FAILED: i32 = 90;
/// The upload's exit status when the stream ended before the staging script.
pub const STREAM_CUT: i32 = 91;

/// Where manifests live on the host, relative to `deploy_to`.
pub fn manifest_path(release: &str) -> String {
    format!(".deploy/manifests/{release}")
}

/// Counts what goes through, for the progress bar and the summary; `on_write` returning false
/// stops the stream (an interrupted deploy).
pub struct Counting<W> {
    inner: W,
    pub written: u64,
    on_write: Box<dyn FnMut(u64) -> bool + Send>,
}

impl<W: Write> Counting<W> {
    pub fn new(inner: W, on_write: Box<dyn FnMut(u64) -> bool + Send>) -> Self {
        Self {
            inner,
            written: 0,
            on_write,
        }
    }
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        if (self.on_write)(n as u64) {
            Ok(n)
        } else {
            Err(io::Error::other("interrupted by a signal"))
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: i64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(u64::try_from(mtime).unwrap_or(0));
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// What one release's stream is made of, the same for every host.
pub struct Release<'a> {
    /// Where the files are read from.
    pub source: &'a Path,
    pub manifest: &'a Manifest,
    /// The manifest as the host keeps it ([`Manifest::to_lines`]).
    pub manifest_lines: &'a [u8],
    /// The release's name.
    pub name: &'a str,
    /// Run on the host once the stream is extracted (the shared links and REVISION).
    pub staged_script: &'a str,
}

/// Writes the stream for `release` to one host: files `delta` links are tar hard links into
/// `previous` (the host's current release), the rest are sent.
pub fn write_release<W: Write>(
    out: W,
    release: &Release,
    delta: &Delta,
    previous: Option<&str>,
) -> io::Result<W> {
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Complete);
    let root = format!("releases/{}", release.name);
    let now = chrono::Utc::now().timestamp();
    b.append_data(
        &mut header(tar::EntryType::Directory, 0o755, 0, now),
        &root,
        io::empty(),
    )?;
    for (i, Entry { path, kind }) in release.manifest.entries().iter().enumerate() {
        let name = format!("{root}/{path}");
        match kind {
            Kind::Dir { mode } => b.append_data(
                &mut header(tar::EntryType::Directory, *mode, 0, now),
                &name,
                io::empty(),
            )?,
            Kind::Symlink { target } => b.append_link(
                &mut header(tar::EntryType::Symlink, 0o777, 0, now),
                &name,
                target,
            )?,
            Kind::File {
                mode, size, mtime, ..
            } => match previous {
                Some(prev) if delta.linked.get(i) == Some(&true) => b.append_link(
                    &mut header(tar::EntryType::Link, *mode, 0, *mtime),
                    &name,
                    format!("releases/{prev}/{path}"),
                )?,
                _ => append_file(&mut b, release.source, path, &name, (*mode, *size, *mtime))?,
            },
        }
    }
    let lines = release.manifest_lines;
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o644, lines.len() as u64, now),
        manifest_path(release.name),
        lines,
    )?;
    let script = release.staged_script.as_bytes();
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o600, script.len() as u64, now),
        staged_path(),
        script,
    )?;
    b.into_inner()
}

/// One file's bytes as `name`, exactly the `size` the manifest says: a file that changed size
/// since it was read fails the upload rather than sending a tar that lies.
fn append_file<W: Write>(
    b: &mut tar::Builder<W>,
    source: &Path,
    path: &str,
    name: &str,
    (mode, size, mtime): (u32, u64, i64),
) -> io::Result<()> {
    let opened = std::fs::File::open(source.join(path))?;
    let mut exact = Exact {
        inner: opened.take(size),
        left: size,
    };
    b.append_data(
        &mut header(tar::EntryType::Regular, mode, size, mtime),
        name,
        &mut exact,
    )?;
    if exact.left != 0 {
        return Err(io::Error::other(format!(
            "{path} shrank while it was being sent; run the deploy again"
        )));
    }
    Ok(())
}

/// A reader that counts down what is left of the size announced in the tar header.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_unchanged_files_and_ends_with_the_manifest() {
        let dir = tempfile::tempdir().expect("dir");
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("lib")).expect("mkdir");
        std::fs::write(src.join("lib/a"), "aaaa").expect("write");
        std::fs::write(src.join("b"), "bb").expect("write");
        let m = Manifest::scan(
            &src,
            &crate::manifest::Exclude::new(&src, &[]).expect("none"),
        )
        .expect("scan");
        let paths: Vec<&str> = m.entries().iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["b", "lib", "lib/a"]);
        let delta = Delta {
            linked: vec![false, false, true],
            send: 1,
            link: 1,
            bytes: 2,
        };
        let lines = m.to_lines();
        let release = Release {
            source: &src,
            manifest: &m,
            manifest_lines: &lines,
            name: "2",
            staged_script: "printf 'r\\n' > releases/2/REVISION\n",
        };
        let bytes = write_release(Vec::new(), &release, &delta, Some("1")).expect("tar");
        let mut ar = tar::Archive::new(bytes.as_slice());
        let entries: Vec<(String, tar::EntryType, Option<String>, u64)> = ar
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                (
                    e.path().expect("path").display().to_string(),
                    e.header().entry_type(),
                    e.link_name()
                        .expect("link")
                        .map(|l| l.display().to_string()),
                    e.size(),
                )
            })
            .collect();
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "releases/2",
                "releases/2/b",
                "releases/2/lib",
                "releases/2/lib/a",
                ".deploy/manifests/2",
                staged_path()
            ]
        );
        assert_eq!(
            entries[5].3,
            release.staged_script.len() as u64,
            "the staging script, last"
        );
        assert_eq!(entries[1].1, tar::EntryType::Regular);
        assert_eq!(entries[1].3, 2);
        assert_eq!(entries[3].1, tar::EntryType::Link);
        assert_eq!(entries[3].2.as_deref(), Some("releases/1/lib/a"));
    }
}
