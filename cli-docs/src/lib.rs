//! What every tool of the toolkit says about itself beyond `--help`, made from its clap
//! command so the two never drift: shell completions (`TOOL completions SHELL`, for bash, zsh,
//! fish, elvish and PowerShell) and man pages (`TOOL man-pages DIR`, which `make install`
//! runs: one page for the tool and one per subcommand, as `git` has).

use std::io::Write;
use std::path::{Path, PathBuf};

pub use clap_complete::Shell;

/// `command`'s completion script for `shell`.
pub fn completion_script(mut command: clap::Command, shell: Shell) -> Vec<u8> {
    let name = command.get_name().to_owned();
    // Made in memory: clap_complete panics on a failed write (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut script);
    script
}

/// Prints `command`'s completion script for `shell` on stdout; a reader that closed the pipe
/// early (`| head`) is not a failure.
pub fn completions(command: clap::Command, shell: Shell) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out
        .write_all(&completion_script(command, shell))
        .and_then(|()| out.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()),
    }
}

/// Writes `command`'s man pages into `dir` (created if missing): `NAME.1`, and
/// `NAME-SUB.1` for each subcommand; returns the pages in `dir`, sorted.
pub fn man_pages(command: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(command, dir)?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.sort();
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool() -> clap::Command {
        clap::Command::new("tool")
            .about("does things")
            .arg(
                clap::Arg::new("verbose")
                    .short('v')
                    .long("verbose")
                    .action(clap::ArgAction::SetTrue),
            )
            .subcommand(clap::Command::new("deploy").about("ships it"))
    }

    #[test]
    fn completions_name_the_tool_its_flags_and_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = String::from_utf8(completion_script(tool(), shell)).expect("utf-8");
            // fish spells a long option `-l verbose`.
            for word in ["tool", "verbose", "deploy"] {
                assert!(text.contains(word), "{shell}: no {word} in\n{text}");
            }
        }
    }

    #[test]
    fn a_page_for_the_tool_and_each_subcommand() {
        let dir = tempfile::tempdir().expect("dir");
        let pages = man_pages(tool(), dir.path()).expect("pages");
        let names: Vec<_> = pages
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        assert_eq!(names, ["tool-deploy.1", "tool.1"]);
        let main = std::fs::read_to_string(&pages[1]).expect("read");
        assert!(
            main.contains(".TH tool 1") && main.contains("does things"),
            "{main}"
        );
    }
}
