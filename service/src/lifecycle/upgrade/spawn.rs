//! Starting a new server: its arguments (`upgrade` turned into `serve`, paths made absolute so
//! a release directory removed later holds none of its files), the listening socket and a
//! channel passed as file descriptors, and the wait for READY or the error it says; its log's
//! last words when it dies first.

use super::UpgradeError;
use crate::lifecycle::listener::{ERROR, HTTP_FD_NAME, READY, UPGRADE_FD_NAME};
use crate::setting_paths;
use command_fds::{CommandFdExt, FdMapping};
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// argv[0] as given, and this invocation's arguments with `upgrade` and its own options replaced
/// by `serve`: the global options (`--config`, `--listen`, …) are the new server's.
pub(super) fn serve_args_from_upgrade(
    mut argv: impl Iterator<Item = OsString>,
) -> (OsString, Vec<OsString>) {
    let program = argv.next().unwrap_or_else(|| "usersvc".into());
    let mut args = Vec::new();
    let mut seen_upgrade = false;
    let mut skip_value = false;
    for a in argv {
        if skip_value {
            skip_value = false;
            continue;
        }
        if !seen_upgrade && a == "upgrade" {
            seen_upgrade = true;
            continue;
        }
        if seen_upgrade {
            if a == "--start" || a.to_string_lossy().starts_with("--timeout=") {
                continue;
            }
            if a == "--timeout" {
                skip_value = true;
                continue;
            }
        }
        args.push(a);
    }
    args.push("serve".into());
    (program, args)
}

/// A path setting's value (`setting_paths::PATH_KEYS`) made absolute against `base`.
fn anchored(key: &str, value: &std::ffi::OsStr, base: &Path) -> OsString {
    match value.to_str() {
        Some(text) => setting_paths::anchor_value(key, text, base).into(),
        None => setting_paths::anchor(Path::new(value), base).into_os_string(),
    }
}

/// `args` with every path option's value absolute against `base` (`--opt value` and
/// `--opt=value` alike): the new server runs elsewhere (`new_server_command`).
pub(super) fn absolute_args(args: &[OsString], base: &Path) -> Vec<OsString> {
    let flags: Vec<(&str, String)> = setting_paths::PATH_KEYS
        .iter()
        .map(|key| (*key, setting_paths::flag_of(key)))
        .collect();
    let mut out = Vec::with_capacity(args.len());
    let mut pending: Option<&str> = None;
    for a in args {
        if let Some(key) = pending.take() {
            out.push(anchored(key, a, base));
            continue;
        }
        let text = a.to_string_lossy();
        match flags.iter().find_map(|(key, flag)| {
            if text == *flag {
                Some((*key, flag, None))
            } else {
                text.strip_prefix(flag.as_str())?
                    .strip_prefix('=')
                    .map(|v| (*key, flag, Some(v.to_owned())))
            }
        }) {
            Some((key, _, None)) => {
                pending = Some(key);
                out.push(a.clone());
            }
            Some((key, flag, Some(value))) => {
                let mut joined = OsString::from(format!("{flag}="));
                joined.push(anchored(key, value.as_ref(), base));
                out.push(joined);
            }
            None => out.push(a.clone()),
        }
    }
    out
}

/// The new server's command. Its program and path options are made absolute against this
/// process's directory, and it runs from the config file's directory when there is one: never
/// from a release directory that cleanup will remove (without a config file, from this
/// process's directory, where its defaults live).
pub(super) fn new_server_command(program: &OsString, args: &[OsString]) -> tokio::process::Command {
    let here = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let program_path = Path::new(program);
    let program = if program_path.is_relative() && program_path.components().count() > 1 {
        here.join(program_path).into_os_string()
    } else {
        program.clone()
    };
    let args = absolute_args(args, &here);
    let mut cmd = tokio::process::Command::new(&program);
    for key in setting_paths::PATH_KEYS {
        let var = setting_paths::env_of(key);
        if let Some(value) = std::env::var_os(&var) {
            cmd.env(&var, anchored(key, &value, &here));
        }
    }
    let config = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.to_str()?.strip_prefix("--config=").map(OsString::from))
        })
        .or_else(|| std::env::var_os("USERSVC_CONFIG").map(|v| anchored("config", &v, &here)));
    let dir = config
        .as_deref()
        .and_then(|c| Path::new(c).parent().map(Path::to_path_buf))
        .unwrap_or(here);
    cmd.args(&args)
        .current_dir(dir)
        // listenfd accepts an unset LISTEN_PID; ours (the parent's) would make the child ignore
        // the sockets.
        .env_remove("LISTEN_PID")
        .kill_on_drop(false);
    cmd
}

/// The last lines a failed new server wrote to `log` after `from` (its stderr, when that is a
/// file), for the error: the reason is where the operator reads it.
pub(super) fn last_words(log: &Path, from: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(log).ok()?;
    let end = f.metadata().ok()?.len();
    let start = from.max(end.saturating_sub(4096));
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut text = String::new();
    f.take(4096).read_to_string(&mut text).ok()?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = &lines[lines.len().saturating_sub(3)..];
    (!tail.is_empty()).then(|| tail.join(" | "))
}

/// Where this process's stderr goes when it is a regular file (a new server inherits it), and
/// its length now.
pub(super) fn stderr_file() -> Option<(PathBuf, u64)> {
    let path = std::fs::read_link("/proc/self/fd/2").ok()?;
    let meta = std::fs::metadata(&path).ok()?;
    meta.is_file().then_some((path, meta.len()))
}

/// Spawns with `listener` (if any) and the upgrade channel as systemd-style passed fds.
pub(super) fn spawn_with_channel(
    mut cmd: tokio::process::Command,
    program: &OsString,
    listener: Option<OwnedFd>,
) -> Result<(tokio::process::Child, tokio::net::UnixStream), UpgradeError> {
    let spawn_err = |source| UpgradeError::Spawn {
        program: program.to_string_lossy().into_owned(),
        source,
    };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(spawn_err)?;
    let mut mappings = Vec::new();
    let mut names = Vec::new();
    if let Some(fd) = listener {
        mappings.push(FdMapping {
            parent_fd: fd,
            child_fd: 3,
        });
        names.push(HTTP_FD_NAME);
    }
    mappings.push(FdMapping {
        parent_fd: theirs.into(),
        child_fd: 3 + names.len() as i32,
    });
    names.push(UPGRADE_FD_NAME);
    cmd.env("LISTEN_FDS", names.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"));
    cmd.fd_mappings(mappings)
        .map_err(|e| spawn_err(std::io::Error::other(e)))?;
    let child = cmd.spawn().map_err(spawn_err)?;
    // `cmd` owns the child's ends of the fds: drop it so the channel sees EOF when the child dies.
    drop(cmd);
    ours.set_nonblocking(true).map_err(spawn_err)?;
    let ours = tokio::net::UnixStream::from_std(ours).map_err(spawn_err)?;
    Ok((child, ours))
}

/// Waits for the new server's READY. Anything else (an ERROR line, an exit, the timeout) kills
/// it and returns why.
pub(super) async fn await_ready(
    child: &mut tokio::process::Child,
    channel: tokio::net::UnixStream,
    timeout: Duration,
) -> Result<tokio::net::UnixStream, String> {
    let mut reader = BufReader::new(channel);
    let mut line = String::new();
    let outcome = tokio::time::timeout(timeout, reader.read_line(&mut line)).await;
    let why = match outcome {
        Ok(Ok(_)) if line.trim() == READY => return Ok(reader.into_inner()),
        Ok(Ok(_)) => match line.trim().strip_prefix(ERROR) {
            Some(msg) => msg.trim().to_owned(),
            None => match child.wait().await {
                Ok(status) => format!("it exited ({status}) before it was ready"),
                Err(e) => format!("it went away before it was ready: {e}"),
            },
        },
        Ok(Err(e)) => format!("lost contact with it: {e}"),
        Err(_) => format!(
            "not ready within {}; killed",
            humantime::format_duration(timeout)
        ),
    };
    let _ = child.start_kill();
    let _ = child.wait().await;
    Err(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn path_options_are_made_absolute() {
        let base = Path::new("/srv/u/releases/1");
        assert_eq!(
            absolute_args(
                &args(&[
                    "--config",
                    "../../shared/usersvc.toml",
                    "--journal=j",
                    "--pid-file",
                    "/run/u.pid",
                    "--database-url",
                    "sqlite://u.db",
                    "--listen",
                    "127.0.0.1:1",
                ]),
                base
            ),
            args(&[
                "--config",
                "/srv/u/releases/1/../../shared/usersvc.toml",
                "--journal=/srv/u/releases/1/j",
                "--pid-file",
                "/run/u.pid",
                "--database-url",
                "sqlite:///srv/u/releases/1/u.db",
                "--listen",
                "127.0.0.1:1",
            ])
        );
    }

    #[test]
    fn start_turns_upgrade_into_serve() {
        let (program, rest) = serve_args_from_upgrade(
            args(&[
                "/srv/u/current/bin/usersvc",
                "--config",
                "/srv/u/shared/usersvc.toml",
                "upgrade",
                "--start",
                "--timeout",
                "5s",
                "--listen",
                "127.0.0.1:1",
            ])
            .into_iter(),
        );
        assert_eq!(program, "/srv/u/current/bin/usersvc");
        assert_eq!(
            rest,
            args(&[
                "--config",
                "/srv/u/shared/usersvc.toml",
                "--listen",
                "127.0.0.1:1",
                "serve"
            ])
        );
        let (_, rest) =
            serve_args_from_upgrade(args(&["usersvc", "upgrade", "--timeout=3s"]).into_iter());
        assert_eq!(rest, args(&["serve"]));
        // What the new server gets parses as `serve` with the same settings.
        let (_, rest) = serve_args_from_upgrade(
            args(&["usersvc", "upgrade", "--start", "--metrics-public"]).into_iter(),
        );
        let new = crate::Invocation::try_parse_from(args(&["usersvc"]).into_iter().chain(rest))
            .expect("the new server's arguments parse");
        assert!(matches!(new.command, crate::Command::Serve));
        assert!(new.settings().expect("valid").api.metrics_public);
    }
}
