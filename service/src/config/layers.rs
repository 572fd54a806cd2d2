//! How the settings are layered: flags and their environment variables over the config file
//! over the defaults. A file's value goes through its flag's own parser (type and bounds) and is
//! named by file, line and key when refused, never quoted (it may be a secret); a bad value from
//! the environment is reported under its variable's name; a secret file is read without its
//! trailing newline.

use super::{Cli, ConfigError, Settings};
use crate::setting_paths::env_of;
use clap::CommandFactory;
use std::collections::BTreeSet;
use std::path::Path;

/// The file's settings over `keys`, except those a flag or the environment set. Each value
/// goes through its flag's own parser (type and bounds) and is named by line and key when
/// refused; a key that is no setting is refused too.
pub(super) fn overlay_file(
    explicit: &BTreeSet<String>,
    path: &Path,
    keys: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(), ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| invalid(toml_message(&text, &e, keys)))?;
    let command = Cli::command();
    for (key, value) in table {
        let at = line_of(&text, &key);
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == key.as_str())
            .filter(|_| keys.contains_key(&key));
        if key == "config" {
            return Err(invalid(format!(
                "{at}: a config file cannot name another; give --config once"
            )));
        }
        let Some(arg) = arg else {
            return Err(invalid(format!(
                "{at}: no such setting; the keys are the long flags with underscores, e.g. listen (usersvc --help lists them)"
            )));
        };
        // A secret's value is never echoed (its errors would quote it).
        let refused = |m: String| {
            if arg.is_hide_env_values_set() {
                invalid(format!(
                    "{at}: write it as a string (the value is not shown)"
                ))
            } else {
                invalid(format!("{at}: {m}"))
            }
        };
        check_value(arg, &value).map_err(refused)?;
        let mut probe = keys.clone();
        let json = serde_json::to_value(&value).map_err(|e| refused(e.to_string()))?;
        probe.insert(key.clone(), json);
        serde_json::from_value::<Settings>(probe.clone().into())
            .map_err(|e| refused(e.to_string()))?;
        if !explicit.contains(&key) {
            *keys = probe;
        }
    }
    Ok(())
}

/// A bad value clap reports under a flag the command line does not hold came from that flag's
/// environment variable: the error says so, so the operator looks in the right place.
pub(super) fn from_environment(mut e: clap::Error, args: &[std::ffi::OsString]) -> clap::Error {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return e;
    };
    let flag = arg.split_whitespace().next().unwrap_or_default().to_owned();
    let given = args.iter().any(|a| {
        a.to_str()
            .is_some_and(|a| a == flag || a.starts_with(&format!("{flag}=")))
    });
    let key = flag.trim_start_matches('-').replace('-', "_");
    let var = env_of(&key);
    if !given && std::env::var_os(&var).is_some() {
        let tip = clap::builder::StyledStr::from(format!("the value comes from {var}"));
        e.insert(ContextKind::Suggested, ContextValue::StyledStrs(vec![tip]));
    }
    e
}

/// The settings as keys (the file's) and values (JSON, durations as text).
pub(super) fn keys_of(
    settings: &Settings,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::to_value(settings) {
        Ok(serde_json::Value::Object(keys)) => Ok(keys),
        Ok(_) => Err("the settings are not a table".into()),
        Err(e) => Err(format!("a setting cannot be read back: {e}")),
    }
}

/// A value from the file put through its flag's parser, as if given as `--key=value`.
pub(super) fn check_value(arg: &clap::Arg, value: &toml::Value) -> Result<(), String> {
    let text = match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::Float(n) => n.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        // A table, an array or a date: the type check refuses it, naming what was expected.
        _ => return Ok(()),
    };
    let Some(long) = arg.get_long() else {
        return Ok(());
    };
    let one = arg
        .clone()
        .env(None::<&'static str>)
        .global(false)
        .default_value(None::<&'static str>);
    clap::Command::new("usersvc")
        .no_binary_name(true)
        .arg(one)
        .try_get_matches_from([format!("--{long}={text}")])
        .map(drop)
        .map_err(|e| match std::error::Error::source(&e) {
            Some(cause) => cause.to_string(),
            None => {
                let shown = e.render().to_string();
                let first = shown.lines().next().unwrap_or_default();
                first.trim_start_matches("error: ").to_owned()
            }
        })
}

/// "line N (key)" where the file sets `key`, or the key alone when it is not found as written.
pub(super) fn line_of(text: &str, key: &str) -> String {
    let set_here = |line: &str| {
        let line = line.trim_start();
        let rest = line
            .strip_prefix(key)
            .or_else(|| line.strip_prefix(&format!("\"{key}\"")));
        // `key = …`, or a table of that name: `[key]`, `[key.x]`, `[[key]]`.
        let table = line.trim_start_matches('[').strip_prefix(key);
        rest.is_some_and(|r| r.trim_start().starts_with('='))
            || (line.starts_with('[') && table.is_some_and(|r| r.starts_with([']', '.'])))
    };
    match text.lines().position(set_here) {
        Some(n) => format!("line {} ({key})", n + 1),
        None => key.to_owned(),
    }
}

/// A secret from a file: its content without the trailing newline; never empty, never printed.
pub(super) fn read_secret(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Secret {
        path: path.to_owned(),
        source,
    })?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(ConfigError::Setting(format!(
            "auth_token_file {} is empty: write the token in it",
            path.display()
        )));
    }
    Ok(secret.to_owned())
}

/// Where a TOML error is and what it says, without quoting the file: the line may hold a
/// secret (`auth_token = "…"`, or a token pasted on a line of its own). The key is named only
/// when the line sets one of `keys`.
pub(super) fn toml_message(
    text: &str,
    e: &toml::de::Error,
    keys: &serde_json::Map<String, serde_json::Value>,
) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let start = before.rfind('\n').map_or(0, |n| n + 1);
            let column = before.len() - start + 1;
            let line_text = text[start..].lines().next().unwrap_or_default();
            let key = line_text
                .split_once('=')
                .map(|(k, _)| k.trim())
                .filter(|k| keys.contains_key(*k));
            match key {
                Some(key) => format!("line {line}, column {column} ({key}): {message}"),
                None => format!("line {line}, column {column}: {message}"),
            }
        }
        None => message.to_owned(),
    }
}
