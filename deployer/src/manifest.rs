//! The manifest of a release: every path of the source tree with its kind, mode and, for
//! files, size and SHA-256. Comparing the new manifest with the one of the host's current
//! release decides what is sent and what is hard-linked.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
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

/// Paths are relative, `/`-separated and sorted, so parents come before their children.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub entries: BTreeMap<String, Kind>,
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
    #[error("the manifest of the current release is unreadable: {0}")]
    Parse(String),
}

/// What one host needs: files to send, files to hard-link from its current release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    pub send: Vec<String>,
    pub link: Vec<String>,
    pub bytes: u64,
}

impl Manifest {
    /// Walks `root` (symlinks are kept as links, never followed) and hashes every file.
    pub fn scan(root: &Path) -> Result<Self, ManifestError> {
        let mut m = Manifest::default();
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
        m.walk(root, root)?;
        Ok(m)
    }

    fn walk(&mut self, root: &Path, dir: &Path) -> Result<(), ManifestError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ManifestError::Io { path, source }
        };
        let mut children: Vec<_> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io(dir))?;
        children.sort();
        for path in children {
            let rel = path
                .strip_prefix(root)
                .ok()
                .and_then(Path::to_str)
                .ok_or_else(|| ManifestError::NotUtf8(path.clone()))?
                .to_owned();
            let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
            let mode = meta.permissions().mode() & 0o7777;
            let ft = meta.file_type();
            if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(io(&path))?;
                let target = target
                    .to_str()
                    .ok_or_else(|| ManifestError::NotUtf8(path.clone()))?
                    .to_owned();
                self.entries.insert(rel, Kind::Symlink { target });
            } else if ft.is_dir() {
                self.entries.insert(rel, Kind::Dir { mode });
                self.walk(root, &path)?;
            } else if ft.is_file() {
                let sha256 = hash_file(&path).map_err(io(&path))?;
                self.entries.insert(
                    rel,
                    Kind::File {
                        mode,
                        size: meta.len(),
                        sha256,
                        mtime: meta.mtime(),
                    },
                );
            } else {
                return Err(ManifestError::Special(path));
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        // Serializing a map of plain data cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Self, ManifestError> {
        serde_json::from_str(text).map_err(|e| ManifestError::Parse(e.to_string()))
    }

    /// A short content hash: the revision of a tree that is not a git checkout.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (path, kind) in &self.entries {
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
            .values()
            .filter(|k| matches!(k, Kind::File { .. }))
            .count()
    }

    /// Files whose content and mode are the same in `previous` are linked; the rest are sent.
    /// Files under `never_link` (the shared paths, which are links into `shared/` on the host)
    /// are always sent.
    pub fn delta(&self, previous: Option<&Manifest>, never_link: &[String]) -> Delta {
        let mut d = Delta::default();
        for (path, kind) in &self.entries {
            let Kind::File {
                mode, size, sha256, ..
            } = kind
            else {
                continue;
            };
            let shared = never_link
                .iter()
                .any(|s| path == s || path.starts_with(&format!("{s}/")));
            let same = previous.and_then(|p| p.entries.get(path)).is_some_and(|old| {
                matches!(old, Kind::File { mode: m, sha256: h, .. } if m == mode && h == sha256)
            });
            if same && !shared {
                d.link.push(path.clone());
            } else {
                d.send.push(path.clone());
                d.bytes += size;
            }
        }
        d
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let old = Manifest::scan(d).expect("scan");
        assert_eq!(old.file_count(), 3);
        assert!(matches!(old.entries["run"], Kind::Symlink { ref target } if target == "bin/app"));
        assert!(matches!(
            old.entries["bin/app"],
            Kind::File {
                mode: 0o755,
                size: 2,
                ..
            }
        ));
        let parsed = Manifest::from_json(&old.to_json()).expect("parse");
        assert_eq!(parsed.digest(), old.digest());

        std::fs::write(d.join("bin/app"), "v2").expect("write");
        std::fs::write(d.join("new.txt"), "new!").expect("write");
        let new = Manifest::scan(d).expect("scan");
        assert_ne!(new.digest(), old.digest());
        let delta = new.delta(Some(&parsed), &["data".into()]);
        assert_eq!(delta.send, ["bin/app", "data/seed", "new.txt"]);
        assert_eq!(delta.link, ["same.txt"]);
        assert_eq!(delta.bytes, 2 + 1 + 4);
        // A mode change alone is a change.
        std::fs::set_permissions(d.join("same.txt"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        let again = Manifest::scan(d).expect("scan");
        assert!(
            again
                .delta(Some(&parsed), &[])
                .send
                .contains(&"same.txt".to_owned())
        );
        // First deploy: everything is sent.
        assert_eq!(new.delta(None, &[]).send.len(), new.file_count());
    }
}
