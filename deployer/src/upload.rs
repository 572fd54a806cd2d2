//! The upload of one release to one host: a single tar stream, extracted by GNU tar in
//! `deploy_to`. Changed files travel whole; unchanged ones are hard links into the current
//! release (no data sent, no extra disk used), made by perl's `link` (GNU `cp -l` without perl)
//! from a list of their names, read on the host or sent in the stream, or by tar link entries
//! when the list cannot serve
//! ([`Delta::link_list`]). Behind them travel the manifest and the script that finishes staging
//! (links, manifest, shared links, REVISION), all under `.deploy/staged-<pid>-<time>.*`; the
//! script runs once tar has extracted everything, so the upload and the staging end are one
//! remote step, and the manifest takes its place only once every file of the release is there.

use crate::delta::{Delta, Rebuild};
use crate::manifest::{Entry, Kind, Manifest};
use crate::ssh::quote;
use std::io::{self, Read, Write};
use std::path::Path;

/// The remote half: extracts the stream in `deploy_to` as the SSH user (no owners from the
/// stream, modes kept); tar's stderr goes to a temp file so it can never stall the stream. It
/// starts before the lock step (to overlap session start-up), so it creates `deploy_to` itself.
/// Then it runs the staging script the stream carried (old staged files of the same name are
/// removed first: a stream that ends before its script is cut short, [`STREAM_CUT`]); the
/// script's failure exits [`LINK_FAILED`], [`MANIFEST_FAILED`] or [`STAGED_FAILED`] (tar's own
/// exits are 1 and 2).
/// Every output goes through a temp file, at most 4000 bytes of it to stderr, so none can stall
/// the channel; no staged file stays.
pub fn remote_command(deploy_to: &str) -> String {
    format!(
        "e=$(mktemp) || exit 1; mkdir -p {d} && cd {d} && rm -f {b}.* && tar -x -p --no-same-owner -f - 2>\"$e\"; s=$?; head -c 4000 \"$e\" >&2
if [ $s -ne 0 ]; then rm -f \"$e\" {b}.*; exit $s; fi
if [ ! -f {b}.sh ]; then rm -f \"$e\" {b}.*; echo 'the stream ended before its staging script: cut short' >&2; exit {STREAM_CUT}; fi
sh {b}.sh >\"$e\" 2>&1; s=$?; head -c 4000 \"$e\" >&2; rm -f \"$e\" {b}.*
case $s in 0) ;; {LINK_FAILED}|{MANIFEST_FAILED}) exit $s;; *) exit {STAGED_FAILED};; esac",
        d = quote(deploy_to),
        b = staged_base()
    )
}

/// Where this process's staged files travel, relative to `deploy_to`, without their endings
/// (`.sh`, `.links`, `.manifest`): a name of its own (pid and start time), since the upload's
/// command starts before the lock is taken, and a deploy locked out must never touch the files
/// of the one that holds the lock. Only digits, letters, `.`, `-` and `/`: safe unquoted.
pub fn staged_base() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!(".deploy/staged-{}-{nanos:x}", std::process::id())
    })
}
/// The upload's exit status when the staging script failed.
pub const STAGED_FAILED: i32 = 90;
/// The upload's exit status when the stream ended before the staging script.
pub const STREAM_CUT: i32 = 91;
/// The upload's exit status when the unchanged files could not be linked from the current
/// release (one is missing there, or the disk is full).
pub const LINK_FAILED: i32 = 92;
/// The upload's exit status when the new manifest could not be put in place (made from the
/// live release's, that one did not hold the lines it was read with).
pub const MANIFEST_FAILED: i32 = 93;

/// What a release's stream takes from the host's live release, when anything.
#[derive(Debug, Clone, Copy)]
pub struct Live<'a> {
    /// The live release's name.
    pub name: &'a str,
    /// The linked files travel as a list of names ([`Delta::link_list`]).
    pub links: bool,
    /// The new manifest is made from the live one's ([`Rebuild`]).
    pub rebuild: Option<&'a Rebuild>,
}

impl<'a> Live<'a> {
    /// The linked files' names are read on the host from the live release's manifest (the
    /// lines kept for the new one), not sent as a list.
    pub fn names_on_host(&self) -> bool {
        self.links && self.rebuild.is_some_and(|r| r.names_on_host)
    }

    /// What `delta` takes from `previous`, the host's live release.
    pub fn of(delta: &'a Delta, previous: Option<&'a str>) -> Option<Self> {
        let name = previous?;
        let links = delta.link_list && delta.link > 0;
        let rebuild = delta.rebuild.as_ref();
        (links || rebuild.is_some()).then_some(Self {
            name,
            links,
            rebuild,
        })
    }
}

/// The script a release's stream ends with, run in `deploy_to` once tar has extracted it: the
/// listed files linked from the live release, the manifest put in place (made from the live
/// one's when it can be), then `shared` (the shared links and REVISION). When the names are read
/// on the host ([`Live::names_on_host`]), the live manifest's lines are kept first, their names
/// written down as they go, and the linking follows (see [`link_script`]).
pub fn staging_script(release: &str, live: Option<Live>, shared: &str) -> String {
    let b = staged_base();
    let m = quote(&manifest_path(release));
    let links = match live {
        Some(Live {
            name, links: true, ..
        }) => link_script(name, release),
        _ => String::new(),
    };
    let finish =
        format!("cat {b}.manifest >> {b}.kept && mv -f {b}.kept {m} || exit {MANIFEST_FAILED}");
    match live {
        Some(
            l @ Live {
                name,
                rebuild: Some(r),
                ..
            },
        ) if l.names_on_host() => format!(
            "{keep} || exit {MANIFEST_FAILED}\ntr '\\n' '\\0' < {b}.names > {b}.links || exit {LINK_FAILED}\n{links}{finish}\n{shared}",
            keep = keep_lines(name, r, true),
        ),
        Some(Live {
            name,
            rebuild: Some(r),
            ..
        }) => format!(
            "{links}{} && {finish}\n{shared}",
            keep_lines(name, r, false)
        ),
        _ => format!(
            "{links}mkdir -p .deploy/manifests && mv -f {b}.manifest {m} || exit {MANIFEST_FAILED}\n{shared}"
        ),
    }
}

/// Links the files `.links` names (NUL-separated, relative) from release `from` into release
/// `to`, whose directories tar made. Perl's `link` costs one `linkat` a file; GNU `cp -l
/// --parents`, used where there is no perl, also five `stat`s (20,000 files: 0.09 s of CPU
/// against 0.25 on tmpfs, 0.25 against 0.37 on a disk). Two processes, each taking every other
/// block of 4,000 names: a disk takes links into two directories faster than into one. Perl
/// runs as the deployer wrote it: `PERL5OPT` from the host's shell startup (`-Mstrict`, `-T`)
/// would break it, and locale warnings would bury the name that failed.
fn link_script(from: &str, to: &str) -> String {
    let b = staged_base();
    let (from, to) = (quote(from), quote(to));
    format!(
        r#"if command -v perl >/dev/null 2>&1; then
  l='BEGIN {{ ($from, $to, $part) = splice(@ARGV, 0, 3) }} chomp; next if int(($. - 1) / 4000) % 2 != $part; link("$from/$_", "$to/$_") or die "cannot link $_: $!\n"'
  PERL5OPT= PERL_BADLANG=0 perl -0 -ne "$l" releases/{from} releases/{to} 0 < {b}.links & lp=$!
  PERL5OPT= PERL_BADLANG=0 perl -0 -ne "$l" releases/{from} releases/{to} 1 < {b}.links; ls=$?
  wait $lp && [ $ls -eq 0 ] || exit {LINK_FAILED}
else
  p=$PWD; (cd releases/{from} && exec xargs -0 -r -P 2 -n 4000 cp -l -P --parents -t "$p"/releases/{to} --) < {b}.links || exit {LINK_FAILED}
fi
"#
    )
}

/// Keeps the lines of release `name`'s manifest that `r` does not drop, in `.kept`, and fails
/// unless there are `r.kept` of them. With `names`, each kept line's name goes to `.names`, one
/// a line (none holds a newline: [`Rebuild::names_on_host`]), and a line that does not begin
/// with its name fails the step.
fn keep_lines(name: &str, r: &Rebuild, names: bool) -> String {
    let b = staged_base();
    let (var, write) = if names {
        (
            format!(" -v names={b}.names"),
            r#" if (index($0, "{\"path\":\"") != 1 || (q = index(substr($0, 10), "\"")) < 2) bad++; else print substr($0, 10, q - 1) > names"#,
        )
    } else {
        (String::new(), "")
    };
    format!(
        "(umask 077 && awk -v k={kept}{var} 'FILENAME == ARGV[1] {{ d[$1]; next }} !(FNR in d) {{ print; n++;{write} }} END {{ if (n != k) {{ print \"the manifest of the live release holds \" n \" of the \" k \" lines expected\" > \"/dev/stderr\"; exit 1 }} if (bad) {{ print bad \" kept lines of the live manifest do not begin with their names\" > \"/dev/stderr\"; exit 1 }} }}' {b}.drop {old} > {b}.kept)",
        kept = r.kept,
        old = quote(&manifest_path(name)),
    )
}

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
    /// The manifest as the host keeps it ([`Manifest::to_lines`]), made when a host first
    /// takes it whole.
    pub manifest_lines: &'a std::sync::OnceLock<Vec<u8>>,
    /// The release's name.
    pub name: &'a str,
    /// Run on the host once the stream is extracted (the shared links and REVISION).
    pub staged_script: &'a str,
}

/// Writes the stream for `release` to one host: the files `delta` links are hard links into
/// `previous` (the host's current release), the rest are sent; then the staged files.
pub fn write_release<W: Write>(
    out: W,
    release: &Release,
    delta: &Delta,
    previous: Option<&str>,
) -> io::Result<W> {
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Complete);
    let now = chrono::Utc::now().timestamp();
    let live = Live::of(delta, previous);
    let names = live.is_some_and(|l| l.names_on_host());
    let list = append_tree(&mut b, release, delta, previous, now, names)?;
    let base = staged_base();
    if !list.is_empty() {
        append_bytes(&mut b, &format!("{base}.links"), &list, now)?;
    }
    let manifest = match live.and_then(|l| l.rebuild) {
        Some(r) => {
            let dropped: String = r.dropped.iter().map(|n| format!("{n}\n")).collect();
            append_bytes(&mut b, &format!("{base}.drop"), dropped.as_bytes(), now)?;
            std::borrow::Cow::Owned(release.manifest.lines_where(|i| !delta.linked[i]))
        }
        None => std::borrow::Cow::Borrowed(
            release
                .manifest_lines
                .get_or_init(|| release.manifest.to_lines())
                .as_slice(),
        ),
    };
    append_bytes(&mut b, &format!("{base}.manifest"), &manifest, now)?;
    let script = staging_script(release.name, live, release.staged_script);
    append_bytes(&mut b, &format!("{base}.sh"), script.as_bytes(), now)?;
    b.into_inner()
}

/// The release's directory and every entry of its manifest; the names of the linked files
/// that travel as a list (NUL-separated, relative to the release), empty when none does or
/// when the host reads them itself (`names_on_host`).
fn append_tree<W: Write>(
    b: &mut tar::Builder<W>,
    release: &Release,
    delta: &Delta,
    previous: Option<&str>,
    now: i64,
    names_on_host: bool,
) -> io::Result<Vec<u8>> {
    let root = format!("releases/{}", release.name);
    let dir = |mode| header(tar::EntryType::Directory, mode, 0, now);
    b.append_data(&mut dir(0o755), &root, io::empty())?;
    let mut list = Vec::new();
    for (i, Entry { path, kind }) in release.manifest.entries().iter().enumerate() {
        let name = format!("{root}/{path}");
        match kind {
            Kind::Dir { mode } => b.append_data(&mut dir(*mode), &name, io::empty())?,
            Kind::Symlink { target } => b.append_link(
                &mut header(tar::EntryType::Symlink, 0o777, 0, now),
                &name,
                target,
            )?,
            Kind::File {
                mode, size, mtime, ..
            } => match previous {
                Some(_) if delta.linked.get(i) == Some(&true) && delta.link_list => {
                    if !names_on_host {
                        list.extend_from_slice(path.as_bytes());
                        list.push(0);
                    }
                }
                Some(prev) if delta.linked.get(i) == Some(&true) => b.append_link(
                    &mut header(tar::EntryType::Link, *mode, 0, *mtime),
                    &name,
                    format!("releases/{prev}/{path}"),
                )?,
                _ => append_file(b, release.source, path, &name, (*mode, *size, *mtime))?,
            },
        }
    }
    Ok(list)
}

/// One staged file of `bytes`, readable by its owner alone.
fn append_bytes<W: Write>(
    b: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
    now: i64,
) -> io::Result<()> {
    let mut h = header(tar::EntryType::Regular, 0o600, bytes.len() as u64, now);
    b.append_data(&mut h, name, bytes)
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
    use std::os::unix::fs::MetadataExt;

    /// One entry of a stream: name, type, link target, contents.
    type Seen = (String, tar::EntryType, Option<String>, Vec<u8>);

    fn entries(bytes: &[u8]) -> Vec<Seen> {
        let mut ar = tar::Archive::new(bytes);
        let all = ar.entries().expect("entries");
        all.map(|e| {
            let mut e = e.expect("entry");
            let link = e
                .link_name()
                .expect("link")
                .map(|l| l.display().to_string());
            let (name, kind) = (e.path().expect("path").display().to_string(), e.header());
            let kind = kind.entry_type();
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("read");
            (name, kind, link, data)
        })
        .collect()
    }

    /// `b` changed, `lib/a` unchanged, `lib`'s mode `lib_mode`: the stream to release 2 from 1.
    fn stream(lib_mode: u32, rebuild: Option<Rebuild>) -> (Vec<Seen>, Manifest) {
        let dir = tempfile::tempdir().expect("dir");
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("lib")).expect("mkdir");
        std::fs::write(src.join("lib/a"), "aaaa").expect("write");
        std::fs::write(src.join("b"), "bb").expect("write");
        let mode = |m| {
            let p = std::os::unix::fs::PermissionsExt::from_mode(m);
            std::fs::set_permissions(src.join("lib"), p).expect("chmod");
        };
        mode(lib_mode);
        let none = crate::manifest::Exclude::new(&src, &[]).expect("none");
        let m2 = Manifest::scan(&src, &none).expect("scan");
        mode(0o755);
        let paths: Vec<&str> = m2.entries().iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["b", "lib", "lib/a"]);
        let mut delta = Delta::new(&m2, None, &[]);
        (delta.linked, delta.link, delta.rebuild) = (vec![false, false, true], 1, rebuild);
        let lines = std::sync::OnceLock::new();
        let release = Release {
            source: &src,
            manifest: &m2,
            manifest_lines: &lines,
            name: "2",
            staged_script: "printf 'r\\n' > releases/2/REVISION\n",
        };
        let bytes = write_release(Vec::new(), &release, &delta, Some("1")).expect("tar");
        (entries(&bytes), m2)
    }

    #[test]
    fn unchanged_files_travel_as_a_list_and_the_manifest_and_script_last() {
        let (seen, manifest) = stream(0o755, None);
        let names: Vec<&str> = seen.iter().map(|e| e.0.as_str()).collect();
        let b = staged_base();
        let staged = [
            b.to_owned() + ".links",
            b.to_owned() + ".manifest",
            b.to_owned() + ".sh",
        ];
        assert_eq!(
            names,
            [
                "releases/2",
                "releases/2/b",
                "releases/2/lib",
                &staged[0],
                &staged[1],
                &staged[2]
            ]
        );
        assert_eq!(
            (seen[1].1, seen[1].3.as_slice()),
            (tar::EntryType::Regular, &b"bb"[..])
        );
        assert_eq!(seen[3].3, b"lib/a\0", "the linked file, by name");
        assert_eq!(seen[4].3, manifest.to_lines(), "the whole manifest");
        let script = String::from_utf8(seen[5].3.clone()).expect("utf-8");
        assert!(
            script.contains(&format!("mv -f {b}.manifest '.deploy/manifests/2' ||")),
            "{script}"
        );
        assert!(
            script.starts_with("if command -v perl >/dev/null 2>&1; then"),
            "{script}"
        );
        assert!(
            script.ends_with("REVISION\n"),
            "the shared part runs last: {script}"
        );
    }

    #[test]
    fn a_directory_its_owner_cannot_write_gets_tar_link_entries() {
        let (seen, _) = stream(0o555, None);
        let names: Vec<&str> = seen.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            &names[..4],
            [
                "releases/2",
                "releases/2/b",
                "releases/2/lib",
                "releases/2/lib/a"
            ]
        );
        assert_eq!(seen[3].1, tar::EntryType::Link);
        assert_eq!(seen[3].2.as_deref(), Some("releases/1/lib/a"));
        assert_eq!(seen.len(), 6, "no list: {names:?}");
        let script = String::from_utf8(seen[5].3.clone()).expect("utf-8");
        assert!(
            script.starts_with("mkdir -p .deploy/manifests && mv -f"),
            "{script}"
        );
    }

    #[test]
    fn a_manifest_made_on_the_host_sends_only_the_lines_not_linked() {
        let dropped = Rebuild {
            dropped: vec![2, 3],
            kept: 1,
            names_on_host: false,
        };
        let (seen, manifest) = stream(0o755, Some(dropped));
        let b = staged_base();
        let names: Vec<&str> = seen.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names[3..],
            [
                b.to_owned() + ".links",
                b.to_owned() + ".drop",
                b.to_owned() + ".manifest",
                b.to_owned() + ".sh"
            ]
        );
        assert_eq!(seen[4].3, b"2\n3\n", "the live manifest's lines to drop");
        assert_eq!(
            seen[5].3,
            manifest.lines_where(|i| i < 2),
            "b and lib, not lib/a"
        );
        let script = String::from_utf8(seen[6].3.clone()).expect("utf-8");
        assert!(
            script.contains("awk -v k=1 ") && script.contains(&format!("{b}.drop '.deploy/manifests/1' > {b}.kept) && cat {b}.manifest >> {b}.kept && mv -f {b}.kept '.deploy/manifests/2' || exit 93")),
            "{script}"
        );
    }

    /// The script's manifest step, run by the host's own sh and awk in a `deploy_to` whose live
    /// release "1" has `old` as its manifest; its exit status and stderr.
    fn rebuilt(old: &str, dropped: &[u32], kept: usize) -> (i32, String, String) {
        let d = tempfile::tempdir().expect("dir");
        let b = staged_base();
        std::fs::create_dir_all(d.path().join(".deploy/manifests")).expect("mkdir");
        std::fs::write(d.path().join(".deploy/manifests/1"), old).expect("old");
        let drop: String = dropped.iter().map(|n| format!("{n}\n")).collect();
        std::fs::write(d.path().join(format!("{b}.drop")), drop).expect("drop");
        std::fs::write(d.path().join(format!("{b}.manifest")), "sent\n").expect("sent");
        let (dropped, kept) = (dropped.to_vec(), kept);
        let rebuild = Rebuild {
            dropped,
            kept,
            names_on_host: false,
        };
        staged(d.path(), false, &rebuild, None)
    }

    /// Runs the staging script of release "2" from live release "1" in `dir` (`links`: the
    /// unchanged files are linked by name), with `path` as PATH when given; its exit status,
    /// the new manifest and stderr.
    fn staged(
        dir: &Path,
        links: bool,
        rebuild: &Rebuild,
        path: Option<&Path>,
    ) -> (i32, String, String) {
        let live = Live {
            name: "1",
            links,
            rebuild: Some(rebuild),
        };
        let mut sh = std::process::Command::new("/bin/sh");
        sh.env("LC_ALL", "C");
        if let Some(path) = path {
            sh.env("PATH", path);
        }
        let out = sh
            .arg("-c")
            .arg(staging_script("2", Some(live), ""))
            .current_dir(dir)
            .output()
            .expect("sh");
        let made = std::fs::read_to_string(dir.join(".deploy/manifests/2")).unwrap_or_default();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code().unwrap_or(-1), made, stderr)
    }

    #[test]
    fn the_host_makes_the_manifest_or_fails_when_the_live_one_is_not_what_was_read() {
        assert_eq!(
            rebuilt("a\nb\nc\n", &[2, 4], 2),
            (0, "a\nc\nsent\n".into(), String::new())
        );
        assert_eq!(
            rebuilt("a\nb\nc\n", &[], 3).1,
            "a\nb\nc\nsent\n",
            "nothing dropped"
        );
        let (code, made, stderr) = rebuilt("a\nc\n", &[2], 2);
        assert_eq!(
            (code, made.as_str()),
            (MANIFEST_FAILED, ""),
            "a line short: no manifest"
        );
        assert!(
            stderr.contains("holds 1 of the 2 lines expected"),
            "{stderr}"
        );
    }

    /// What the deployer keeps as the host's next manifest is, byte for byte, what the host's
    /// sh and awk made: a live manifest with and without a last newline, with an empty line.
    #[test]
    fn the_copy_kept_of_a_manifest_made_on_the_host_is_what_the_host_made() {
        use crate::live_manifests::LiveManifests;
        for (old, dropped, kept) in [
            ("a\nb\nc\n", &[2, 4][..], 2),
            ("a\nb\nc", &[1], 2),
            ("a\n\nc\n", &[3], 2),
        ] {
            let d = tempfile::tempdir().expect("dir");
            let (code, made, stderr) = rebuilt(old, dropped, kept);
            assert_eq!((code, stderr.as_str()), (0, ""), "{old:?}");
            LiveManifests::at(Some(d.path().into())).learn_whole(old.as_bytes());
            let copies = LiveManifests::at(Some(d.path().into()));
            let old_sum = crate::manifest::sha256_hex(old.as_bytes());
            assert_eq!(copies.offered(), std::slice::from_ref(&old_sum));
            copies.learn_rebuilt(&old_sum, dropped, || b"sent\n".to_vec());
            let sum = crate::manifest::sha256_hex(made.as_bytes());
            let kept = std::fs::read_to_string(d.path().join(&sum));
            assert_eq!(kept.ok().as_deref(), Some(made.as_str()), "{old:?}");
        }
    }

    /// The whole script, names read on the host, in a `deploy_to` whose live release "1" holds
    /// `a` and `dir/c d` and has `old` as its manifest (its second line dropped): the exit status,
    /// the new manifest, stderr, and whether both files were linked into release "2". With
    /// `path`, the script runs with it as PATH; with `lost`, the live release lost `a`.
    fn linked_by_name(old: &str, path: Option<&Path>, lost: bool) -> (i32, String, String, bool) {
        let d = tempfile::tempdir().expect("dir");
        let b = staged_base();
        let at = |p: &str| d.path().join(p);
        std::fs::create_dir_all(at(".deploy/manifests")).expect("mkdir");
        std::fs::create_dir_all(at("releases/1/dir")).expect("mkdir");
        // Made by tar, before the script runs.
        std::fs::create_dir_all(at("releases/2/dir")).expect("mkdir");
        if !lost {
            std::fs::write(at("releases/1/a"), "a").expect("a");
        }
        std::fs::write(at("releases/1/dir/c d"), "c").expect("c");
        std::fs::write(at(".deploy/manifests/1"), old).expect("old");
        std::fs::write(at(&format!("{b}.drop")), "2\n").expect("drop");
        std::fs::write(at(&format!("{b}.manifest")), "sent\n").expect("sent");
        let rebuild = Rebuild {
            dropped: vec![2],
            kept: 2,
            names_on_host: true,
        };
        let (code, made, stderr) = staged(d.path(), true, &rebuild, path);
        let ino = |p: &str| std::fs::metadata(at(p)).map(|m| m.ino()).ok();
        let linked = ["a", "dir/c d"].iter().all(|f| {
            ino(&format!("releases/2/{f}"))
                .is_some_and(|i| Some(i) == ino(&format!("releases/1/{f}")))
        });
        (code, made, stderr, linked)
    }

    #[test]
    fn the_host_reads_the_names_to_link_from_the_lines_it_keeps() {
        let a = r#"{"path":"a","type":"file","mode":420,"size":1,"sha256":"x"}"#;
        let b = r#"{"path":"b","type":"file","mode":420,"size":1,"sha256":"y"}"#;
        let c = r#"{"path":"dir/c d","type":"file","mode":420,"size":1,"sha256":"z"}"#;
        let (code, made, stderr, linked) = linked_by_name(&format!("{a}\n{b}\n{c}\n"), None, false);
        assert_eq!((code, stderr.as_str(), linked), (0, "", true));
        assert_eq!(made, format!("{a}\n{c}\nsent\n"));
        // A kept line that does not begin with its name: nothing linked, no manifest.
        let moved = r#"{"type":"file","path":"dir/c d"}"#;
        let (code, made, stderr, linked) =
            linked_by_name(&format!("{a}\n{b}\n{moved}\n"), None, false);
        assert_eq!((code, made.as_str(), linked), (MANIFEST_FAILED, "", false));
        assert!(
            stderr.contains("1 kept lines of the live manifest do not begin with their names"),
            "{stderr}"
        );
    }

    /// A host without perl links with GNU cp, to the same effect; a file the live release lost
    /// fails the step either way, naming it.
    #[test]
    fn without_perl_cp_links_the_same_files() {
        let tools = tempfile::tempdir().expect("dir");
        for tool in ["awk", "tr", "xargs", "cp", "cat", "mv", "mkdir"] {
            let found = ["/usr/bin", "/bin"]
                .iter()
                .map(|d| Path::new(d).join(tool))
                .find(|p| p.exists())
                .expect(tool);
            std::os::unix::fs::symlink(found, tools.path().join(tool)).expect("symlink");
        }
        let a = r#"{"path":"a","type":"file","mode":420,"size":1,"sha256":"x"}"#;
        let b = r#"{"path":"b","type":"file","mode":420,"size":1,"sha256":"y"}"#;
        let c = r#"{"path":"dir/c d","type":"file","mode":420,"size":1,"sha256":"z"}"#;
        let old = format!("{a}\n{b}\n{c}\n");
        // perl's message, then cp's: each way was taken.
        for (path, named) in [(None, "cannot link a:"), (Some(tools.path()), "'a'")] {
            let (code, made, stderr, linked) = linked_by_name(&old, path, false);
            assert_eq!((code, stderr.as_str(), linked), (0, "", true), "{path:?}");
            assert_eq!(made, format!("{a}\n{c}\nsent\n"));
            let (code, made, stderr, _) = linked_by_name(&old, path, true);
            assert_eq!((code, made.as_str()), (LINK_FAILED, ""), "{path:?}");
            assert!(
                stderr.contains(named) && stderr.contains("No such file"),
                "{stderr}"
            );
        }
    }

    /// Past 4,000 names the list is split between two processes: every name is linked, and a
    /// name missing in either half fails the step. Perl must be on the test machine (`make
    /// peers`: Debian's perl-base is essential).
    #[test]
    fn a_long_list_is_linked_whole_by_both_processes() {
        assert!(
            Path::new("/usr/bin/perl").exists(),
            "perl missing: make peers"
        );
        for missing in [None, Some(1234), Some(4050)] {
            // On tmpfs where there is one: this VM's disk takes seconds over 4,000 small files.
            let d = tempfile::tempdir_in("/dev/shm")
                .or_else(|_| tempfile::tempdir())
                .expect("dir");
            let at = |p: &str| d.path().join(p);
            std::fs::create_dir_all(at("releases/1/d")).expect("mkdir");
            std::fs::create_dir_all(at("releases/2/d")).expect("mkdir");
            std::fs::create_dir_all(at(".deploy")).expect("mkdir");
            let mut list = Vec::new();
            for i in 0..4100 {
                if Some(i) != missing {
                    std::fs::write(at(&format!("releases/1/d/f{i}")), "x").expect("f");
                }
                list.extend_from_slice(format!("d/f{i}\0").as_bytes());
            }
            std::fs::write(at(&format!("{}.links", staged_base())), list).expect("links");
            let out = std::process::Command::new("/bin/sh")
                .args(["-c", &link_script("1", "2")])
                .current_dir(d.path())
                .output()
                .expect("sh");
            let linked = std::fs::read_dir(at("releases/2/d")).expect("d").count();
            match missing {
                None => assert_eq!((out.status.code(), linked), (Some(0), 4100)),
                Some(i) => {
                    assert_eq!(out.status.code(), Some(LINK_FAILED), "{i}");
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    assert!(stderr.contains(&format!("cannot link d/f{i}:")), "{stderr}");
                }
            }
        }
    }
}
