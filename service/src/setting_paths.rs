//! Which settings are paths, and how a path is made absolute against the directory of
//! whatever set it (a config file's directory, or the working directory for flags and the
//! environment). A leaf: the config layering (`config/layers.rs`) and `upgrade`, which anchors the
//! same settings in the arguments it passes on, both use it, and it imports neither.

use std::path::{Path, PathBuf};

/// The settings whose value is a path, made absolute against the directory of whatever set them
/// (the database URL when it is SQLite's). `upgrade` anchors the same ones in the arguments it
/// passes on.
pub(crate) const PATH_KEYS: &[&str] = &[
    "config",
    "journal",
    "pid_file",
    "auth_token_file",
    "database_url",
];

/// A setting's flag: `pid_file` → `--pid-file`.
pub(crate) fn flag_of(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

/// A setting's environment variable: `pid_file` → `USERSVC_PID_FILE`.
pub(crate) fn env_of(key: &str) -> String {
    format!("USERSVC_{}", key.to_uppercase())
}

/// A path setting's value made absolute against `base`.
pub(crate) fn anchor_value(key: &str, value: &str, base: &Path) -> String {
    if key == "database_url" {
        anchor_url(value, base)
    } else {
        anchor(Path::new(value), base).display().to_string()
    }
}

/// `path` made absolute against `base` (unchanged when it already is).
pub(crate) fn anchor(path: &Path, base: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

/// A `sqlite:` URL's relative file made absolute against `base`; any other URL unchanged.
pub(crate) fn anchor_url(url: &str, base: &Path) -> String {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return url.to_owned();
    };
    let (file, query) = match rest.split_once('?') {
        Some((f, q)) => (f, format!("?{q}")),
        None => (rest, String::new()),
    };
    if file.is_empty() || file.starts_with('/') || file.contains(":memory:") {
        return url.to_owned();
    }
    format!("sqlite://{}{query}", base.join(file).display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_relative_sqlite_files_move() {
        let d = Path::new("/srv/usersvc/shared");
        assert_eq!(
            anchor_url("sqlite://usersvc.db", d),
            "sqlite:///srv/usersvc/shared/usersvc.db"
        );
        assert_eq!(anchor_url("postgres://u@h/db", d), "postgres://u@h/db");
        assert_eq!(anchor_url("sqlite::memory:", d), "sqlite::memory:");
        assert_eq!(anchor_url("sqlite:///abs.db", d), "sqlite:///abs.db");
        assert_eq!(anchor(Path::new("j"), d), d.join("j"));
        assert_eq!(flag_of("pid_file"), "--pid-file");
        assert_eq!(env_of("pid_file"), "USERSVC_PID_FILE");
    }
}
