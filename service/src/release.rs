//! Which release this process runs: the directory above `bin/` (a Capistrano-style
//! `releases/<timestamp>/bin/usersvc`) and the `REVISION` file the deployer writes there.

use std::path::Path;

/// This build's version (the crate's), for `version`, `rpc.discover` and `/metrics`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The release a binary belongs to; both are `None` outside a release layout (a cargo build).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Release {
    /// The release directory's name, e.g. `20261123201500`.
    pub name: Option<String>,
    /// The first line of the release's `REVISION` file.
    pub revision: Option<String>,
}

impl Release {
    /// The release of the running executable. The path is the resolved one (`/proc/self/exe`),
    /// so a server started through `current/bin/usersvc` reports the release it really runs,
    /// even after `current` has moved on.
    pub fn of_running_exe() -> Self {
        std::env::current_exe()
            .map(|exe| Self::of_exe(&exe))
            .unwrap_or_default()
    }

    pub fn of_exe(exe: &Path) -> Self {
        let Some(dir) = exe
            .parent()
            .filter(|bin| bin.file_name().is_some_and(|n| n == "bin"))
            .and_then(Path::parent)
        else {
            return Self::default();
        };
        let revision = std::fs::read_to_string(dir.join("REVISION"))
            .ok()
            .and_then(|text| text.lines().next().map(str::trim).map(str::to_owned))
            .filter(|r| !r.is_empty());
        Self {
            name: dir.file_name().map(|n| n.to_string_lossy().into_owned()),
            revision,
        }
    }

    /// The `version` answer: `{name, version, revision, release}`.
    /// What `usersvc --version` prints after the name: the version, and inside a release its
    /// revision and name, as `/version` answers them.
    pub fn version_line(&self) -> String {
        match (&self.revision, &self.name) {
            (None, None) => VERSION.to_owned(),
            (revision, name) => format!(
                "{VERSION} (revision {}, release {})",
                revision.as_deref().unwrap_or("unknown"),
                name.as_deref().unwrap_or("none")
            ),
        }
    }

    pub fn version_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": "usersvc",
            "version": VERSION,
            "revision": self.revision,
            "release": self.name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_release_layout() {
        let dir = tempfile::tempdir().expect("temp dir");
        let release = dir.path().join("releases/20261123201500");
        std::fs::create_dir_all(release.join("bin")).expect("mkdir");
        std::fs::write(release.join("REVISION"), "abc123\n").expect("write");
        let r = Release::of_exe(&release.join("bin/usersvc"));
        assert_eq!(r.name.as_deref(), Some("20261123201500"));
        assert_eq!(r.revision.as_deref(), Some("abc123"));

        assert_eq!(
            r.version_line(),
            format!("{VERSION} (revision abc123, release 20261123201500)")
        );
        std::fs::remove_file(release.join("REVISION")).expect("rm");
        let r = Release::of_exe(&release.join("bin/usersvc"));
        assert_eq!(r.revision, None, "no REVISION file: null");
        assert_eq!(r.name.as_deref(), Some("20261123201500"));

        assert_eq!(
            Release::of_exe(Path::new("/work/target/debug/usersvc")),
            Release::default(),
            "not under bin/: no release"
        );
    }
}
