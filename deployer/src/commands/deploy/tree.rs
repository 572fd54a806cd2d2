//! The local half of a deploy, every host locked and kept connected: the build (unless
//! `--ref`), then the tree read and hashed, each shown as it goes.

use super::{DeployError, Options, Run};
use crate::build;
use crate::config::Config;
use crate::progress::Step;
use crate::settings::Settings;
use crate::source::{self, Tree};

/// The local half, every host locked and kept connected: the build (unless `--ref`), then
/// the tree read and hashed, each shown as it goes.
pub(super) fn prepare(
    cfg: &Config,
    settings: &Settings,
    options: &Options,
    runs: &[Run],
) -> Result<Tree, DeployError> {
    if let (None, Some(command)) = (&options.git_ref, &cfg.build) {
        let step = Step::start(settings, &format!("building: {command}"), false);
        let built = build::run(
            cfg,
            build::Watch {
                on_line: &mut |line| {
                    if settings.verbose {
                        step.println(&format!("  build: {line}"));
                    }
                },
                tick: &mut || runs.iter().for_each(|r| r.host.keepalive()),
                stop: &settings.interrupted,
            },
        );
        match built {
            Ok(()) => step.done("built"),
            Err(e) => {
                step.abandon();
                return Err(DeployError::Build(e));
            }
        }
    }
    Ok(read_tree(cfg, options, settings)?)
}

/// Reads and hashes the tree `options` ask for, showing the bytes hashed as they go.
pub(super) fn read_tree(
    cfg: &Config,
    options: &Options,
    settings: &Settings,
) -> Result<Tree, source::SourceError> {
    let what = match options.git_ref.as_deref() {
        Some(r) => format!("reading {r} of {}", cfg.source.display()),
        None => format!("reading {}", cfg.source.display()),
    };
    let step = Step::start(settings, &what, true);
    match source::tree(cfg, options.choice(), step.bar()) {
        Ok(tree) => {
            let h = tree.hashing;
            step.done(&format!(
                "read {} files: {} hashed ({}), {} unchanged since the last read",
                tree.manifest.file_count(),
                h.hashed_files,
                crate::table::bytes(h.hashed_bytes),
                h.cached_files
            ));
            Ok(tree)
        }
        Err(e) => {
            step.abandon();
            Err(e)
        }
    }
}
