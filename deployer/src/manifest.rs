//! The manifest of a release: every path of the source tree with its kind, mode and, for
//! files, size and SHA-256. Comparing the new manifest with what the host's current release
//! holds decides what is sent and what is hard-linked.
//!
//! On a host, `.deploy/manifests/<release>` holds it as JSON lines, one entry a line: it is
//! written and read as a stream, whatever the tree's size. A host's listing of its current
//! release (`delta::KnownReader`) is matched line by line against the new manifest, so what the
//! deployer keeps per host is one flag per file, never the host's manifest.

use crate::hash_cache::{HashCache, Stamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Kind {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        size: u64,
        sha256: String,
        #[serde(default, skip)]
        mtime: i64,
    },
    Symlink {
        target: String,
    },
}

/// One path of the tree: relative, `/`-separated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
}

/// An [`Entry`] as one line of the host's manifest: `{"path":…,"type":"file",…}`. Flat, so a
/// line is read without buffering (serde's `flatten` costs ~5× on 20,000 lines).
#[derive(Serialize, Deserialize)]
pub(crate) struct Line<'a> {
    #[serde(borrow)]
    pub(crate) path: std::borrow::Cow<'a, str>,
    #[serde(rename = "type")]
    pub(crate) kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mode: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sha256: Option<&'a str>,
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    target: Option<std::borrow::Cow<'a, str>>,
}

impl<'a> Line<'a> {
    fn of(e: &'a Entry) -> Self {
        let (kind, mode, size, sha256, target) = match &e.kind {
            Kind::Dir { mode } => ("dir", Some(*mode), None, None, None),
            Kind::File {
                mode, size, sha256, ..
            } => (
                "file",
                Some(*mode),
                Some(*size),
                Some(sha256.as_str()),
                None,
            ),
            Kind::Symlink { target } => ("symlink", None, None, None, Some(target.as_str().into())),
        };
        Self {
            path: e.path.as_str().into(),
            kind,
            mode,
            size,
            sha256,
            target,
        }
    }
}

/// Entries sorted by path, so parents come before their children.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: file names must be UTF-8")]
    NotUtf8(PathBuf),
    #[error("{0}: only files, directories and symlinks can be deployed")]
    Special(PathBuf),
    #[error("exclude pattern {pattern:?}: {message}")]
    Exclude { pattern: String, message: String },
}

/// The `exclude` patterns of deploy.toml (gitignore syntax, relative to the source), and
/// `.git`, which never travels.
pub struct Exclude(ignore::gitignore::Gitignore);

impl Exclude {
    pub fn new(root: &Path, patterns: &[String]) -> Result<Self, ManifestError> {
        let mut b = ignore::gitignore::GitignoreBuilder::new(root);
        for p in patterns {
            b.add_line(None, p).map_err(|e| ManifestError::Exclude {
                pattern: p.clone(),
                message: e.to_string(),
            })?;
        }
        b.build().map(Self).map_err(|e| ManifestError::Exclude {
            pattern: patterns.join(", "),
            message: e.to_string(),
        })
    }

    fn skips(&self, rel: &str, is_dir: bool) -> bool {
        rel.rsplit('/').next() == Some(".git") || self.0.matched(rel, is_dir).is_ignore()
    }
}

impl Manifest {
    /// Walks `root` (symlinks are kept as links, never followed) and hashes every file; paths
    /// `exclude` matches are left out, directories with all they hold. (Deploys read through
    /// [`Manifest::scan_cached`]; tests build trees with this.)
    #[cfg(test)]
    pub fn scan(root: &Path, exclude: &Exclude) -> Result<Self, ManifestError> {
        Self::scan_cached(root, exclude, HashCache::none).map(|(m, _)| m)
    }

    /// As [`Manifest::scan`], taking a file's hash from the cache `open` gives while the file
    /// is unchanged; the cache is given back. The tree is listed before `open` is called, so
    /// the cache can be read meanwhile (20-30 ms for 20,000 files).
    pub fn scan_cached(
        root: &Path,
        exclude: &Exclude,
        open: impl FnOnce() -> HashCache,
    ) -> Result<(Self, HashCache), ManifestError> {
        let meta = std::fs::metadata(root).map_err(|source| ManifestError::Io {
            path: root.to_owned(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(ManifestError::Io {
                path: root.to_owned(),
                source: std::io::Error::other("not a directory"),
            });
        }
        let mut m = Manifest::default();
        let mut files = Vec::new();
        m.walk(root, root, exclude, &mut files)?;
        let mut cache = open();
        for (i, stamp) in files {
            // Only files are listed in `files`.
            let Entry {
                path,
                kind: Kind::File { sha256, .. },
            } = &mut m.entries[i]
            else {
                continue;
            };
            let full = || root.join(&*path);
            *sha256 = cache
                .sha256(path, stamp, || hash_file(&full()))
                .map_err(|source| ManifestError::Io {
                    path: full(),
                    source,
                })?;
        }
        m.entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((m, cache))
    }

    /// Lists `dir` into the entries, files with no hash yet: their index and stamp go to
    /// `files`.
    fn walk(
        &mut self,
        root: &Path,
        dir: &Path,
        exclude: &Exclude,
        files: &mut Vec<(usize, Stamp)>,
    ) -> Result<(), ManifestError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ManifestError::Io { path, source }
        };
        // Each entry's metadata is asked of the directory being read (fstatat, not followed, as
        // symlink_metadata), which spares the kernel a walk of the whole path for each file;
        // all of it before going deeper, so one directory is open at a time.
        let children: Vec<_> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .map(|e| e.map(|e| (e.path(), e.metadata())))
            .collect::<Result<_, _>>()
            .map_err(io(dir))?;
        for (path, meta) in children {
            let rel = path
                .strip_prefix(root)
                .ok()
                .and_then(Path::to_str)
                .ok_or_else(|| ManifestError::NotUtf8(path.clone()))?
                .to_owned();
            let meta = meta.map_err(io(&path))?;
            let ft = meta.file_type();
            if exclude.skips(&rel, ft.is_dir()) {
                continue;
            }
            let kind = Self::kind(&path, &meta).map_err(io(&path))?;
            let is_dir = matches!(kind, Some(Kind::Dir { .. }));
            let kind = kind.ok_or_else(|| ManifestError::Special(path.clone()))?;
            if let Kind::Symlink { target } = &kind
                && target.is_empty()
            {
                return Err(ManifestError::NotUtf8(path));
            }
            if matches!(kind, Kind::File { .. }) {
                files.push((self.entries.len(), Stamp::of(&meta)));
            }
            self.entries.push(Entry { path: rel, kind });
            if is_dir {
                self.walk(root, &path, exclude, files)?;
            }
        }
        Ok(())
    }

    /// What `path` is (`None`: neither file, directory nor symlink); a file's hash is left
    /// empty, for `scan_cached` to fill.
    fn kind(path: &Path, meta: &std::fs::Metadata) -> std::io::Result<Option<Kind>> {
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        Ok(Some(if ft.is_symlink() {
            let target = std::fs::read_link(path)?;
            Kind::Symlink {
                target: target.to_str().unwrap_or_default().to_owned(),
            }
        } else if ft.is_dir() {
            Kind::Dir { mode }
        } else if ft.is_file() {
            Kind::File {
                mode,
                size: meta.len(),
                sha256: String::new(),
                mtime: meta.mtime(),
            }
        } else {
            return Ok(None);
        }))
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry at `path` and its index.
    pub fn get(&self, path: &str) -> Option<(usize, &Kind)> {
        let i = self
            .entries
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()?;
        Some((i, &self.entries[i].kind))
    }

    /// The manifest as the host keeps it: JSON lines, one entry a line.
    pub fn to_lines(&self) -> Vec<u8> {
        self.lines_where(|_| true)
    }

    /// The lines of the entries whose index `keep` takes.
    pub fn lines_where(&self, keep: impl Fn(usize) -> bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 140);
        for (_, e) in self.entries.iter().enumerate().filter(|(i, _)| keep(*i)) {
            // Serializing plain data into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, &Line::of(e));
            out.push(b'\n');
        }
        out
    }

    /// A short content hash: the revision of a tree that is not a git checkout.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for Entry { path, kind } in &self.entries {
            h.update(path.as_bytes());
            h.update([0]);
            match kind {
                Kind::Dir { mode } => h.update(format!("d{mode:o}")),
                Kind::File { mode, sha256, .. } => h.update(format!("f{mode:o}{sha256}")),
                Kind::Symlink { target } => h.update(format!("l{target}")),
            }
            h.update([0]);
        }
        hex(&h.finalize())[..12].to_owned()
    }

    pub fn file_count(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e.kind, Kind::File { .. }))
            .count()
    }
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// The SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex, as `sha256sum` prints a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excluded_paths_and_git_never_travel() {
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path();
        for p in [
            ".git/HEAD",
            "sub/.git",
            "logs/x.log",
            "keep.txt",
            "a/tmp/x",
            "b.log",
        ] {
            let p = d.join(p);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, "x").expect("write");
        }
        let ex = Exclude::new(d, &["*.log".into(), "/a/tmp/".into()]).expect("patterns");
        let m = Manifest::scan(d, &ex).expect("scan");
        let paths: Vec<&str> = m.entries().iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a", "keep.txt", "logs", "sub"]);
        assert!(Exclude::new(d, &["{a,b".into()]).is_err());
    }
}
