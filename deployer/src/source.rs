//! The local side of a release: the build command that makes the source tree, and the
//! revision it is named by. The tree itself is read by `manifest`.

use crate::config::Config;
use crate::fleet;
use crate::manifest::Manifest;
use std::path::Path;

/// The build command exited non-zero or could not run: its last lines.
#[derive(Debug, thiserror::Error)]
#[error("the build command {command:?} failed: {message}")]
pub struct BuildFailed {
    pub command: String,
    pub message: String,
}

/// Runs the local build command, in the config file's directory.
pub fn build(cfg: &Config) -> Result<(), BuildFailed> {
    let Some(command) = &cfg.build else {
        return Ok(());
    };
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(&cfg.base)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| BuildFailed {
            command: command.clone(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        return Err(BuildFailed {
            command: command.clone(),
            message: fleet::last_lines(&text, 8).unwrap_or_else(|| out.status.to_string()),
        });
    }
    Ok(())
}

/// The revision of the source: the override, git HEAD when the source is in a checkout, else
/// the manifest's content hash.
pub fn revision(source: &Path, manifest: &Manifest, given: Option<&str>) -> String {
    if let Some(r) = given {
        return r.to_owned();
    }
    std::process::Command::new("git")
        .arg("-C")
        .arg(source)
        .args(["rev-parse", "--short=12", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| manifest.digest())
}
