//! What one host needs of a new release. Its listing of its live release (the deployer's
//! manifest, or modes and sums hashed on a Capistrano host) is read line by line against the
//! new manifest ([`KnownReader`] → [`Known`]: one flag per file, never the host's manifest);
//! from that, which files are hard-linked and which sent ([`Delta`]), and whether the new
//! manifest can be made on the host from the live release's ([`Rebuild`]).

use crate::manifest::{Entry, Kind, Line, Manifest};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

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
    /// The new manifest is made on the host from the live release's, when that one is the
    /// deployer's JSON lines and something is linked.
    pub rebuild: Option<Rebuild>,
}

/// The host's manifest of its live release holds a line for each linked file, as the new
/// manifest would write it. The new one is that manifest with the lines numbered `dropped`
/// (1-based: files changed or gone, directories, symlinks, lines it could not read) removed,
/// `kept` lines left, and the lines of the entries not linked added: a change of a few files
/// sends a few lines, not ~140 bytes for every file of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuild {
    pub dropped: Vec<u32>,
    pub kept: usize,
    /// Each kept line begins `{"path":"NAME"` with nothing in NAME escaped, so the host reads
    /// the linked files' names from them: the list of names need not travel (~20 bytes a file).
    pub names_on_host: bool,
}

impl Delta {
    /// Files the host already has (`known`, read from its current release) are linked; the rest
    /// are sent. Files under `never_link` (the shared paths, which are links into `shared/` on
    /// the host) are always sent.
    pub fn new(new: &Manifest, known: Option<&Known>, never_link: &[String]) -> Delta {
        let entries = new.entries();
        let shared = |path: &str| {
            never_link.iter().any(|s| {
                path.strip_prefix(s.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
        };
        let mut d = Delta {
            linked: vec![false; entries.len()],
            // A shared directory is replaced by a link into shared/: its mode does not count.
            link_list: entries.iter().all(|e| match e.kind {
                Kind::Dir { mode } => mode & 0o300 == 0o300 || shared(&e.path),
                _ => true,
            }),
            ..Delta::default()
        };
        for (i, Entry { path, kind }) in entries.iter().enumerate() {
            let Kind::File { size, .. } = kind else {
                continue;
            };
            if !shared(path) && known.is_some_and(|k| k.same.get(i) == Some(&true)) {
                d.linked[i] = true;
                d.link += 1;
            } else {
                d.send += 1;
                d.bytes += size;
            }
        }
        d.rebuild = known.and_then(|k| k.rebuild(&d.linked, d.link));
        d
    }
}

/// `line` begins `{"path":"` and `path` exactly, then `"`: nothing in the name was escaped (a
/// quote, a backslash, a control character), so what the host's awk cuts out of the raw line
/// between the first two quotes after `{"path":` is the name the deployer read.
fn plain_name(line: &[u8], path: &str) -> bool {
    line.strip_prefix(b"{\"path\":\"")
        .and_then(|rest| rest.strip_prefix(path.as_bytes()))
        .is_some_and(|rest| rest.first() == Some(&b'"'))
}

/// Which files of a new manifest a host's current release already holds, with the same
/// content and mode: one flag per entry of the new manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    same: Vec<bool>,
    /// The deployer's JSON lines were read: for each entry held, the number of its line.
    lines: Option<Lines>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Lines {
    of: Vec<u32>,
    seen: u32,
    /// Every line matched begins with its name as it is ([`plain_name`]).
    plain: bool,
}

impl Known {
    /// How the host makes the new manifest from its own, when every linked file has its line.
    fn rebuild(&self, linked: &[bool], link: usize) -> Option<Rebuild> {
        let lines = self.lines.as_ref().filter(|_| link > 0)?;
        // Each dropped line is a number sent: past the new manifest's own count of lines (a tree
        // that shrank, a host padding its listing) the manifest sent whole costs less, and what
        // is held here stays bounded by the new manifest, not by what the host sent.
        if (lines.seen as usize).saturating_sub(link) > linked.len() {
            return None;
        }
        let mut keep = vec![false; lines.seen as usize + 1];
        for (i, _) in linked.iter().enumerate().filter(|(_, l)| **l) {
            let at = *lines.of.get(i).filter(|n| **n > 0)?;
            keep[at as usize] = true;
        }
        let dropped = (1..=lines.seen).filter(|n| !keep[*n as usize]).collect();
        Some(Rebuild {
            dropped,
            kept: link,
            names_on_host: lines.plain,
        })
    }
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
    /// Line numbers, while what is read is the deployer's JSON lines.
    lines: Option<Lines>,
}

/// The single JSON document deployers before JSON lines wrote.
#[derive(Deserialize)]
struct Legacy {
    entries: BTreeMap<String, Kind>,
}

impl<'m> KnownReader<'m> {
    pub fn new(new: &'m Manifest) -> Self {
        let n = new.entries().len();
        Self {
            new,
            same: vec![false; n],
            modes: HashMap::new(),
            lines: Some(Lines {
                of: vec![0; n],
                seen: 0,
                plain: true,
            }),
        }
    }

    /// One line of the deployer's manifest. A line that is not one of its JSON lines (but the
    /// empty one after the last) means the host's awk could split the file into lines otherwise
    /// (a NUL ends a line for some): the new manifest is then sent whole, not made from it.
    pub fn manifest_line(&mut self, line: &[u8]) {
        let number = self.lines.as_mut().map(|l| {
            l.seen += 1;
            l.seen
        });
        if line.starts_with(b"{\"entries\"") {
            self.lines = None;
            if let Ok(legacy) = serde_json::from_slice::<Legacy>(line) {
                for (path, kind) in &legacy.entries {
                    if let Kind::File {
                        mode, sha256, size, ..
                    } = kind
                    {
                        self.offer_file(path, *mode, sha256, Some(*size));
                    }
                }
            }
            return;
        }
        let Ok(l) = serde_json::from_slice::<Line>(line) else {
            if !line.is_empty() {
                self.lines = None;
            }
            return;
        };
        if let (Some(mode), Some(sha)) = (l.mode, l.sha256)
            && l.kind == "file"
            && let Some(i) = self.offer_file(&l.path, mode, sha, l.size)
            && let (Some(lines), Some(n)) = (self.lines.as_mut(), number)
        {
            lines.of[i] = n;
            lines.plain &= plain_name(line, &l.path);
        }
    }

    /// `MODE<TAB>PATH`, as `find -printf '%m\t%P\n'` prints it.
    pub fn mode_line(&mut self, line: &[u8]) {
        self.lines = None;
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
        self.lines = None;
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
            self.offer_file(path, mode, sha, None);
        }
    }

    /// The host holds a file at `path` with `mode`, content `sha` and, when its listing says,
    /// `size`: the index of that file in the new manifest when it is the same there.
    fn offer_file(&mut self, path: &str, mode: u32, sha: &str, size: Option<u64>) -> Option<usize> {
        if let Some((
            i,
            Kind::File {
                mode: m,
                sha256,
                size: s,
                ..
            },
        )) = self.new.get(path)
            && *m == mode
            && sha256 == sha
            && size.is_none_or(|size| size == *s)
        {
            self.same[i] = true;
            return Some(i);
        }
        None
    }

    pub fn finish(self) -> Known {
        Known {
            same: self.same,
            lines: self.lines,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Exclude;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

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
        let delta = Delta::new(&new, Some(&known), &["data".into()]);
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
        let delta = Delta::new(&again, Some(&known_from(&old, &again)), &[]);
        let (i, _) = again.get("same.txt").expect("listed");
        assert!(!delta.linked[i], "same.txt is sent");
        // First deploy: everything is sent.
        assert_eq!(Delta::new(&new, None, &[]).send, new.file_count());
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
        assert_eq!(Delta::new(&m, Some(&r.finish()), &[]).link, 1);
        // What `find -printf` and `sha256sum` say of a Capistrano release.
        let mut r = KnownReader::new(&m);
        r.mode_line(format!("{:o}\ta", mode("a")).as_bytes());
        r.mode_line(format!("{:o}\tb", mode("b") ^ 0o100).as_bytes());
        r.sum_line(format!("{}  ./a", sha("a")).as_bytes());
        r.sum_line(format!("{}  ./b", sha("b")).as_bytes());
        r.sum_line(b"\\0000  ./we\\nird");
        let d2 = Delta::new(&m, Some(&r.finish()), &[]);
        assert_eq!((d2.link, d2.send), (1, 1), "b's mode differs");
    }

    #[test]
    fn the_new_manifest_is_made_from_the_live_ones_lines_and_the_lines_not_linked() {
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path();
        for (path, text) in [("a", "a"), ("lib/b", "b"), ("lib/c", "c"), ("z", "z")] {
            std::fs::create_dir_all(d.join(path).parent().expect("parent")).expect("mkdir");
            std::fs::write(d.join(path), text).expect("write");
        }
        let old = Manifest::scan(d, &none(d)).expect("scan");
        std::fs::write(d.join("lib/c"), "changed").expect("write");
        std::fs::remove_file(d.join("z")).expect("rm");
        std::fs::write(d.join("new"), "new").expect("write");
        let new = Manifest::scan(d, &none(d)).expect("scan");
        let delta = Delta::new(&new, Some(&known_from(&old, &new)), &[]);
        let rebuild = delta
            .rebuild
            .clone()
            .expect("our JSON lines: rebuilt on the host");
        // Old lines: a, lib, lib/b, lib/c, z, and the empty line after the last newline.
        assert_eq!(
            (rebuild.kept, rebuild.dropped.clone(), rebuild.names_on_host),
            (2, vec![2, 4, 5, 6], true)
        );
        // What the host's awk does: the old lines not dropped, then the lines sent.
        let old_text = old.to_lines();
        let mut made: Vec<&[u8]> = old_text
            .split(|&b| b == b'\n')
            .enumerate()
            .filter(|(i, _)| !rebuild.dropped.contains(&(*i as u32 + 1)))
            .map(|(_, l)| l)
            .collect();
        let sent = new.lines_where(|i| !delta.linked[i]);
        made.extend(sent.split(|&b| b == b'\n').filter(|l| !l.is_empty()));
        let all = new.to_lines();
        let mut want: Vec<&[u8]> = all
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        made.sort();
        want.sort();
        assert_eq!(made, want, "the same entries, in another order");
        // Listings other than our JSON lines, and nothing linked: the whole manifest travels.
        assert!(Delta::new(&new, None, &[]).rebuild.is_none());
        let mut r = KnownReader::new(&new);
        r.mode_line(b"644\ta");
        assert!(Delta::new(&new, Some(&r.finish()), &[]).rebuild.is_none());
        // A line that is not one of ours (here with a NUL, which ends a line for some awks):
        // the files are still linked, the manifest is sent whole.
        let mut r = KnownReader::new(&new);
        for line in old_text.split(|&b| b == b'\n') {
            r.manifest_line(line);
        }
        r.manifest_line(b"junk\0{\"path\":\"a\"}");
        let d = Delta::new(&new, Some(&r.finish()), &[]);
        assert_eq!((d.link, d.rebuild), (2, None));
        // No more dropped lines than the new manifest has lines: at the limit a host's listing
        // padded with empty lines is still made from, one past it the manifest travels whole.
        let padded = |extra: usize| {
            let mut r = KnownReader::new(&new);
            for line in old_text.split(|&b| b == b'\n') {
                r.manifest_line(line);
            }
            (0..extra).for_each(|_| r.manifest_line(b""));
            r.finish()
        };
        let seen = padded(0)
            .lines
            .map(|l| l.seen as usize)
            .expect("our JSON lines");
        let at = new.entries().len() + delta.link - seen;
        assert!(Delta::new(&new, Some(&padded(at)), &[]).rebuild.is_some());
        assert!(
            Delta::new(&new, Some(&padded(at + 1)), &[])
                .rebuild
                .is_none()
        );
        // A line whose size is not the file's is not the same file: sent.
        let a = String::from_utf8(old.lines_where(|i| i == 0)).expect("utf-8");
        let mut r = KnownReader::new(&new);
        r.manifest_line(a.trim_end().replace("\"size\":1", "\"size\":2").as_bytes());
        assert_eq!(Delta::new(&new, Some(&r.finish()), &[]).link, 0, "{a}");
    }

    /// The host reads the names to link from the kept lines only when they are written there
    /// as they are: a name JSON escapes (a quote, a backslash, a control character) travels.
    #[test]
    fn the_host_reads_the_names_only_when_nothing_in_them_is_escaped() {
        for (name, plain) in [
            ("plain name", true),
            ("ünïcode", true),
            ("quo\"te", false),
            ("back\\slash", false),
            ("tab\there", false),
        ] {
            let dir = tempfile::tempdir().expect("dir");
            let d = dir.path();
            std::fs::write(d.join(name), "same").expect("write");
            std::fs::write(d.join("other"), "old").expect("write");
            let old = Manifest::scan(d, &none(d)).expect("scan");
            std::fs::write(d.join("other"), "new").expect("write");
            let new = Manifest::scan(d, &none(d)).expect("scan");
            let delta = Delta::new(&new, Some(&known_from(&old, &new)), &[]);
            let rebuild = delta.rebuild.expect("made on the host");
            assert_eq!((delta.link, rebuild.names_on_host), (1, plain), "{name:?}");
        }
    }
}
