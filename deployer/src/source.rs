//! The local side of a release: where its tree comes from (the `source` directory as it is,
//! made by the `build` command, or with `--ref` a git commit's version of it), what names it
//! (the revision and the branch), and its manifest.
//!
//! A tree that is in no commit is never deployed under a commit's name: a source inside a git
//! work tree with uncommitted changes is refused unless `--allow-dirty`, and then its revision
//! ends in `-dirty`.

use crate::config::Config;
use crate::fleet;
use crate::hash_cache::{Counts, HashCache, Saving};
use crate::manifest::{Exclude, Manifest, ManifestError};
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read the source tree: {0}")]
    Manifest(#[from] ManifestError),
    #[error(
        "{dir} is in a git work tree with uncommitted changes ({files}): commit them, deploy a commit with --ref, or pass --allow-dirty (the revision then ends in -dirty)"
    )]
    Dirty { dir: String, files: String },
    #[error("--ref {git_ref}: {message}")]
    Ref { git_ref: String, message: String },
}

/// What the command line asks of the source.
#[derive(Debug, Clone, Copy, Default)]
pub struct Choice<'a> {
    /// Deploy this commit's version of the source directory (`git archive`).
    pub git_ref: Option<&'a str>,
    /// Deploy a work tree with uncommitted changes, its revision marked `-dirty`.
    pub allow_dirty: bool,
    /// Write this to REVISION instead.
    pub revision: Option<&'a str>,
}

/// The tree a release is made of, read and named.
pub struct Tree {
    /// Where its files are read from while they are sent.
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub revision: String,
    /// The ref deployed (`--ref`), or the work tree's branch, or `none` outside git.
    pub branch: String,
    /// What reading it hashed, and took from the cache of earlier deploys.
    pub hashing: Counts,
    /// The commit's files, for `--ref`: removed when the tree is dropped.
    _extracted: Option<tempfile::TempDir>,
    /// The hash cache being written meanwhile: waited for when the tree is dropped.
    _saving: Option<Saving>,
}

/// Reads the tree `choice` asks for: the commit's (`--ref`), or the source directory's; each
/// byte hashed is counted on `shown`.
pub fn tree(cfg: &Config, choice: Choice, shown: &ProgressBar) -> Result<Tree, SourceError> {
    let mut t = match choice.git_ref {
        Some(r) => from_commit(cfg, r, shown)?,
        None => from_directory(cfg, choice.allow_dirty, shown)?,
    };
    if let Some(r) = choice.revision {
        t.revision = r.to_owned();
    }
    Ok(t)
}

fn from_directory(
    cfg: &Config,
    allow_dirty: bool,
    shown: &ProgressBar,
) -> Result<Tree, SourceError> {
    let exclude = Exclude::new(&cfg.source, &cfg.exclude)?;
    // The cache is read on another thread while the tree is listed (here, with no thread).
    let source = cfg.source.clone();
    let reading = std::thread::Builder::new()
        .name("hash-cache".into())
        .spawn(move || HashCache::open(&source));
    let open = || {
        match reading {
            Ok(t) => t.join().unwrap_or_else(|_| HashCache::none()),
            Err(_) => HashCache::open(&cfg.source),
        }
        .showing(shown)
    };
    let (manifest, cache) = Manifest::scan_cached(&cfg.source, &exclude, open)?;
    let hashing = cache.counts();
    let saving = Some(cache.save_aside());
    // Outside git, or in a repository without a commit yet: the tree is named by its content.
    let in_git = git(&cfg.source, &["rev-parse", "--show-toplevel"]).and_then(|top| {
        Ok((
            top,
            git(&cfg.source, &["rev-parse", "--verify", "HEAD^{commit}"])?,
        ))
    });
    let Ok((top, head)) = in_git else {
        return Ok(Tree {
            dir: cfg.source.clone(),
            revision: manifest.digest(),
            manifest,
            branch: "none".into(),
            hashing,
            _extracted: None,
            _saving: saving,
        });
    };
    let revision = work_tree_revision(cfg, &top, head, allow_dirty)?;
    let branch =
        git(&cfg.source, &["rev-parse", "--abbrev-ref", "HEAD"]).unwrap_or_else(|_| "HEAD".into());
    Ok(Tree {
        dir: cfg.source.clone(),
        manifest,
        revision,
        branch,
        hashing,
        _extracted: None,
        _saving: saving,
    })
}

/// The revision of a work tree at commit `head`: the commit's, `-dirty` after it when files
/// in no commit may reach the release and `allow_dirty` says so, else refused naming them.
fn work_tree_revision(
    cfg: &Config,
    top: &str,
    head: String,
    allow_dirty: bool,
) -> Result<String, SourceError> {
    let changed = uncommitted(Path::new(top), &cfg.source);
    match (changed.is_empty(), allow_dirty) {
        (true, _) => Ok(head),
        (false, true) => Ok(format!("{head}-dirty")),
        (false, false) => {
            let mut files = changed
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if changed.len() > 10 {
                files.push_str(&format!(" and {} more", changed.len() - 10));
            }
            Err(SourceError::Dirty {
                dir: cfg.source.display().to_string(),
                files,
            })
        }
    }
}

/// What in the work tree at `top` is in no commit and may reach the release: every change to
/// a tracked file (it may be built into the source), and untracked files inside `source`
/// (they travel). Ignored files are not changes.
fn uncommitted(top: &Path, source: &Path) -> Vec<String> {
    let Ok(out) = git_bytes(
        top,
        &["status", "--porcelain=v1", "-z", "--untracked-files=all"],
    ) else {
        return Vec::new();
    };
    let inside = inside_repo(top, source).unwrap_or_default();
    let mut changed = Vec::new();
    let mut records = out.split(|&b| b == 0).filter(|r| r.len() > 3);
    while let Some(r) = records.next() {
        let (xy, path) = (&r[..2], String::from_utf8_lossy(&r[3..]).into_owned());
        if xy[0] == b'R' || xy[0] == b'C' {
            records.next(); // the name it was renamed or copied from
        }
        let untracked_outside = xy == b"??"
            && !(inside.is_empty() || path == inside || path.starts_with(&format!("{inside}/")));
        if !untracked_outside {
            changed.push(path);
        }
    }
    changed
}

/// `source` relative to the work tree at `top`, `/`-separated (empty: the top itself).
fn inside_repo(top: &Path, source: &Path) -> Option<String> {
    let top = top.canonicalize().ok()?;
    let source = match source.canonicalize() {
        Ok(s) => s,
        Err(_) => source
            .parent()?
            .canonicalize()
            .ok()?
            .join(source.file_name()?),
    };
    let rel = source.strip_prefix(&top).ok()?;
    Some(rel.to_str()?.trim_end_matches('/').to_owned())
}

/// The source directory as commit `r` holds it, extracted from `git archive` (which honours
/// `export-ignore`) into a temporary directory.
fn from_commit(cfg: &Config, r: &str, shown: &ProgressBar) -> Result<Tree, SourceError> {
    let err = |message: String| SourceError::Ref {
        git_ref: r.to_owned(),
        message,
    };
    // The source directory may exist only in the commit: find the repository from the
    // config file's directory.
    let here = if cfg.source.is_dir() {
        cfg.source.as_path()
    } else {
        cfg.base.as_path()
    };
    let top = git(here, &["rev-parse", "--show-toplevel"])
        .map_err(|e| err(format!("the source is not in a git repository ({e})")))?;
    let top = PathBuf::from(top);
    let sha = git(
        &top,
        &[
            "rev-parse",
            "--verify",
            "--end-of-options",
            &format!("{r}^{{commit}}"),
        ],
    )
    .map_err(|_| {
        err(format!(
            "no such commit, branch or tag in {}",
            top.display()
        ))
    })?;
    let inside = inside_repo(&top, &cfg.source).ok_or_else(|| {
        err(format!(
            "{} is not inside {}",
            cfg.source.display(),
            top.display()
        ))
    })?;
    let extracted = tempfile::tempdir().map_err(|e| err(format!("cannot make a temp dir: {e}")))?;
    archive(&top, &sha, &inside, extracted.path()).map_err(err)?;
    let dir = extracted.path().join(&inside);
    if !dir.is_dir() {
        return Err(err(format!(
            "commit {sha} has no directory {}",
            if inside.is_empty() { "." } else { &inside }
        )));
    }
    let exclude = Exclude::new(&dir, &cfg.exclude)?;
    let (manifest, cache) =
        Manifest::scan_cached(&dir, &exclude, || HashCache::none().showing(shown))?;
    Ok(Tree {
        dir,
        manifest,
        revision: sha,
        branch: r.to_owned(),
        hashing: cache.counts(),
        _extracted: Some(extracted),
        _saving: None,
    })
}

/// `git archive SHA -- PATH`, unpacked into `into` as it streams.
fn archive(top: &Path, sha: &str, path: &str, into: &Path) -> Result<(), String> {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(top)
        .args(["archive", "--format=tar", sha]);
    if !path.is_empty() {
        cmd.args(["--", path]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run git: {e}"))?;
    let unpacked = match child.stdout.take() {
        Some(out) => tar::Archive::new(out).unpack(into),
        None => Ok(()),
    };
    let out = child
        .wait_with_output()
        .map_err(|e| format!("git archive: {e}"))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "git archive failed: {}",
            fleet::last_lines(&said, 2).unwrap_or_else(|| out.status.to_string())
        ));
    }
    unpacked.map_err(|e| format!("cannot unpack git archive: {e}"))
}

/// `git -C dir ARGS`: its output, trimmed, or what it said when it failed.
fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = git_bytes(dir, args)?;
    Ok(String::from_utf8_lossy(&out).trim().to_owned())
}

fn git_bytes(dir: &Path, args: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(fleet::last_lines(&String::from_utf8_lossy(&out.stderr), 1)
            .unwrap_or_else(|| out.status.to_string()))
    }
}
