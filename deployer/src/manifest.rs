//! The manifest of a release: every path of the source tree with its kind, mode and, for
//! files, size and SHA-256. Comparing the new manifest with what the host's current release
//! holds decides what is sent and what is hard-linked.
//!
//! On a host, `.deploy/manifests/<release>` holds it as JSON lines, one entry a line: it is
//! written and read as a stream, whatever the tree's size. A host's listing of its current
//! release ([`KnownReader`]) is matched line by line against the new manifest, so what the
//! deployer keeps per host is one flag per file, never the host's manifest.

use crate::hash_cache::HashCache;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
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
struct Line<'a> {
    #[serde(borrow)]
    path: std::borrow::Cow<'a, str>,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<&'a str>,
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

/// What one host needs: for each entry of the new manifest, whether it is a file hard-linked
/// from the host's current release; how many files are sent and linked, and the bytes sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    pub linked: Vec<bool>,
    pub send: usize,
    pub link: usize,
    pub bytes: u64,
    /// The linked files travel as a list of names the host links once the stream is extracted
    /// (a few dozen bytes a file, not a 512-byte tar entry): every directory of the tree is
    /// writable and searchable by its owner. Tar gives a directory its mode only once the
    /// stream ends, so nothing could be linked into one that is not; then tar links them all.
    pub link_list: bool,
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
        Self::scan_cached(root, exclude, &mut HashCache::none())
    }

    /// As [`Manifest::scan`], taking a file's hash from `cache` while the file is unchanged.
    pub fn scan_cached(
        root: &Path,
        exclude: &Exclude,
        cache: &mut HashCache,
    ) -> Result<Self, ManifestError> {
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
        m.walk(root, root, exclude, cache)?;
        m.entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(m)
    }

    fn walk(
        &mut self,
        root: &Path,
        dir: &Path,
        exclude: &Exclude,
        cache: &mut HashCache,
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
            let kind = Self::kind(&path, &rel, &meta, cache).map_err(io(&path))?;
            let is_dir = matches!(kind, Some(Kind::Dir { .. }));
            let kind = kind.ok_or_else(|| ManifestError::Special(path.clone()))?;
            if let Kind::Symlink { target } = &kind
                && target.is_empty()
            {
                return Err(ManifestError::NotUtf8(path));
            }
            self.entries.push(Entry { path: rel, kind });
            if is_dir {
                self.walk(root, &path, exclude, cache)?;
            }
        }
        Ok(())
    }

    /// What `path` is (`None`: neither file, directory nor symlink); a file is hashed.
    fn kind(
        path: &Path,
        rel: &str,
        meta: &std::fs::Metadata,
        cache: &mut HashCache,
    ) -> std::io::Result<Option<Kind>> {
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
                sha256: cache.sha256(rel, meta, || hash_file(path))?,
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
        let mut out = Vec::with_capacity(self.entries.len() * 140);
        for e in &self.entries {
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

    /// Files the host already has (`known`, read from its current release) are linked; the rest
    /// are sent. Files under `never_link` (the shared paths, which are links into `shared/` on
    /// the host) are always sent.
    pub fn delta(&self, known: Option<&Known>, never_link: &[String]) -> Delta {
        let mut d = Delta {
            linked: vec![false; self.entries.len()],
            link_list: self.entries.iter().all(|e| match e.kind {
                Kind::Dir { mode } => mode & 0o300 == 0o300,
                _ => true,
            }),
            ..Delta::default()
        };
        for (i, Entry { path, kind }) in self.entries.iter().enumerate() {
            let Kind::File { size, .. } = kind else {
                continue;
            };
            let shared = never_link
                .iter()
                .any(|s| path == s || path.starts_with(&format!("{s}/")));
            if !shared && known.is_some_and(|k| k.same.get(i) == Some(&true)) {
                d.linked[i] = true;
                d.link += 1;
            } else {
                d.send += 1;
                d.bytes += size;
            }
        }
        d
    }
}

/// Which files of a new manifest a host's current release already holds, with the same
/// content and mode: one flag per entry of the new manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    same: Vec<bool>,
}

/// Reads a host's listing of its current release, line by line, against the new manifest:
/// the deployer's own manifest (JSON lines, or the single JSON document older deployers
/// wrote), or, for a release without one (Capistrano's), the modes and SHA-256 sums the host
/// computed. A line it cannot read is left out: that file is sent.
pub struct KnownReader<'m> {
    new: &'m Manifest,
    same: Vec<bool>,
    /// Modes of the files the host listed, until their sums arrive.
    modes: HashMap<String, u32>,
}

/// The single JSON document deployers before JSON lines wrote.
#[derive(Deserialize)]
struct Legacy {
    entries: BTreeMap<String, Kind>,
}

impl<'m> KnownReader<'m> {
    pub fn new(new: &'m Manifest) -> Self {
        Self {
            new,
            same: vec![false; new.entries.len()],
            modes: HashMap::new(),
        }
    }

    /// One line of the deployer's manifest.
    pub fn manifest_line(&mut self, line: &[u8]) {
        if line.starts_with(b"{\"entries\"") {
            if let Ok(legacy) = serde_json::from_slice::<Legacy>(line) {
                for (path, kind) in &legacy.entries {
                    self.offer(path, kind);
                }
            }
        } else if let Ok(l) = serde_json::from_slice::<Line>(line)
            && let (Some(mode), Some(sha)) = (l.mode, l.sha256)
            && l.kind == "file"
        {
            self.offer_file(&l.path, mode, sha);
        }
    }

    /// `MODE<TAB>PATH`, as `find -printf '%m\t%P\n'` prints it.
    pub fn mode_line(&mut self, line: &[u8]) {
        let Ok(line) = std::str::from_utf8(line) else {
            return;
        };
        if let Some((mode, path)) = line.split_once('\t')
            && let Ok(mode) = u32::from_str_radix(mode, 8)
            && self.new.get(path).is_some()
        {
            self.modes.insert(path.to_owned(), mode);
        }
    }

    /// `SHA256  ./PATH`, as `sha256sum` prints it (a line starting with `\` has an escaped name:
    /// left out).
    pub fn sum_line(&mut self, line: &[u8]) {
        let Ok(line) = std::str::from_utf8(line) else {
            return;
        };
        let Some((sha, path)) = line.split_once("  ") else {
            return;
        };
        let path = path.strip_prefix("./").unwrap_or(path);
        if sha.len() != 64 || sha.starts_with('\\') {
            return;
        }
        if let Some(&mode) = self.modes.get(path) {
            self.offer_file(path, mode, sha);
        }
    }

    fn offer(&mut self, path: &str, kind: &Kind) {
        if let Kind::File { mode, sha256, .. } = kind {
            self.offer_file(path, *mode, sha256);
        }
    }

    /// The host holds a file at `path` with `mode` and content `sha`.
    fn offer_file(&mut self, path: &str, mode: u32, sha: &str) {
        if let Some((
            i,
            Kind::File {
                mode: m, sha256, ..
            },
        )) = self.new.get(path)
            && *m == mode
            && sha256 == sha
        {
            self.same[i] = true;
        }
    }

    pub fn finish(self) -> Known {
        Known { same: self.same }
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(root: &Path) -> Exclude {
        Exclude::new(root, &[]).expect("no patterns")
    }

    /// What a host that holds `old` reports, line by line, matched against `new`.
    fn known_from(old: &Manifest, new: &Manifest) -> Known {
        let mut r = KnownReader::new(new);
        for line in old.to_lines().split(|&b| b == b'\n') {
            r.manifest_line(line);
        }
        r.finish()
    }

    #[test]
    fn scan_delta_and_round_trip() {
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("bin")).expect("mkdir");
        std::fs::write(d.join("bin/app"), "v1").expect("write");
        std::fs::set_permissions(d.join("bin/app"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::fs::write(d.join("same.txt"), "same").expect("write");
        std::fs::create_dir_all(d.join("data")).expect("mkdir");
        std::fs::write(d.join("data/seed"), "x").expect("write");
        std::os::unix::fs::symlink("bin/app", d.join("run")).expect("symlink");
        let old = Manifest::scan(d, &none(d)).expect("scan");
        assert_eq!(old.file_count(), 3);
        assert!(
            matches!(old.get("run"), Some((_, Kind::Symlink { target })) if target == "bin/app")
        );
        assert!(matches!(
            old.get("bin/app"),
            Some((
                _,
                Kind::File {
                    mode: 0o755,
                    size: 2,
                    ..
                }
            ))
        ));

        std::fs::write(d.join("bin/app"), "v2").expect("write");
        std::fs::write(d.join("new.txt"), "new!").expect("write");
        let new = Manifest::scan(d, &none(d)).expect("scan");
        assert_ne!(new.digest(), old.digest());
        let known = known_from(&old, &new);
        let delta = new.delta(Some(&known), &["data".into()]);
        let linked: Vec<&str> = new
            .entries()
            .iter()
            .zip(&delta.linked)
            .filter(|(_, l)| **l)
            .map(|(e, _)| e.path.as_str())
            .collect();
        assert_eq!(linked, ["same.txt"]);
        assert_eq!((delta.send, delta.link), (3, 1));
        assert_eq!(delta.bytes, 2 + 1 + 4);
        // A mode change alone is a change.
        std::fs::set_permissions(d.join("same.txt"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        let again = Manifest::scan(d, &none(d)).expect("scan");
        let delta = again.delta(Some(&known_from(&old, &again)), &[]);
        let (i, _) = again.get("same.txt").expect("listed");
        assert!(!delta.linked[i], "same.txt is sent");
        // First deploy: everything is sent.
        assert_eq!(new.delta(None, &[]).send, new.file_count());
    }

    #[test]
    fn older_manifests_and_listings_the_host_hashed() {
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path();
        std::fs::write(d.join("a"), "aaaa").expect("write");
        std::fs::write(d.join("b"), "bb").expect("write");
        let m = Manifest::scan(d, &none(d)).expect("scan");
        let sha = |p: &str| match m.get(p) {
            Some((_, Kind::File { sha256, .. })) => sha256.clone(),
            _ => panic!("{p} is a file"),
        };
        // The single JSON document of older deployers.
        let legacy = format!(
            r#"{{"entries":{{"a":{{"type":"file","mode":420,"size":4,"sha256":"{}"}}}}}}"#,
            sha("a")
        );
        let mode = |p: &str| match m.get(p) {
            Some((_, Kind::File { mode, .. })) => *mode,
            _ => panic!("{p} is a file"),
        };
        let mut r = KnownReader::new(&m);
        r.manifest_line(legacy.replace("420", &mode("a").to_string()).as_bytes());
        assert_eq!(m.delta(Some(&r.finish()), &[]).link, 1);
        // What `find -printf` and `sha256sum` say of a Capistrano release.
        let mut r = KnownReader::new(&m);
        r.mode_line(format!("{:o}\ta", mode("a")).as_bytes());
        r.mode_line(format!("{:o}\tb", mode("b") ^ 0o100).as_bytes());
        r.sum_line(format!("{}  ./a", sha("a")).as_bytes());
        r.sum_line(format!("{}  ./b", sha("b")).as_bytes());
        r.sum_line(b"\\0000  ./we\\nird");
        let d2 = m.delta(Some(&r.finish()), &[]);
        assert_eq!((d2.link, d2.send), (1, 1), "b's mode differs");
    }

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
