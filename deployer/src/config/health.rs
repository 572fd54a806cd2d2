//! `[health]`: the gate's own keys (url, method, command, retries, interval, timeout), and every
//! other key one of check_jsonrpc's long options, turned into its arguments when the file is
//! loaded and checked by its own parser.

use super::{Problem, resolve};
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

/// `[health]`: the gate's own keys, and every other key one of check_jsonrpc's long options
/// (with underscores: `bearer_file` is `--bearer-file`), read by check_jsonrpc's own parser, so
/// an option the plugin gains is a `[health]` key without being written here too.
#[derive(Debug, Clone, Deserialize)]
pub struct Health {
    pub url: Option<String>,
    pub method: Option<String>,
    pub command: Option<String>,
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Between checks [default: 1s]
    #[serde(
        default = "default_interval",
        deserialize_with = "toolkit_core::duration::deserialize"
    )]
    pub interval: Duration,
    /// Per check [default: 10s]
    #[serde(
        default = "default_check_timeout",
        deserialize_with = "toolkit_core::duration::deserialize"
    )]
    pub timeout: Duration,
    /// The in-process check's options, as written: a string or number is the option's value, a
    /// list repeats the option, `true` is a flag. Secrets come from files on this machine; no
    /// subprocess, and nothing of them is ever sent to a host. `{host}`, `{release}` and
    /// `{revision}` may appear in any value.
    #[serde(flatten)]
    pub options: std::collections::BTreeMap<String, toml::Value>,
    /// `options` as check_jsonrpc's arguments (`--expect V` …), made when the file is loaded.
    #[serde(skip)]
    args: Vec<String>,
}

/// check_jsonrpc's options that `[health]` does not take, and why: the gate sets them, or they
/// would put a secret in deploy.toml.
const GATE_OWNS: &[(&str, &str)] = &[
    (
        "hostname",
        "the gate checks each host: give the URL as url = \"http://{host}:8080/\"",
    ),
    ("ip_address", "the gate checks each host at url"),
    ("port", "give the port in url"),
    ("ssl", "write url = \"https://…\""),
    (
        "verbose",
        "the gate keeps the first line; deployer -v shows hooks",
    ),
    ("help", "not an option of a check"),
    ("version", "not an option of a check"),
    (
        "bearer",
        "keep the token in a file: bearer_file = \"usersvc.token\"",
    ),
    (
        "authorization",
        "keep the credentials in a file: authorization_file",
    ),
];

impl Health {
    /// Makes `options` into check_jsonrpc's arguments, the files' relative paths `base`'s.
    pub(super) fn prepare(&mut self, base: &Path) -> Result<(), Problem> {
        let files = nagios_plugin::file_options();
        let mut args = Vec::new();
        for (key, value) in &self.options {
            if let Some((_, why)) = GATE_OWNS.iter().find(|(k, _)| k == key) {
                return Err(Problem::CheckOption(format!("{key}: {why}")));
            }
            let long = key.replace('_', "-");
            let flag = format!("--{long}");
            let values = match value {
                toml::Value::Array(list) => list.iter().collect(),
                one => vec![one],
            };
            for v in values {
                match v {
                    toml::Value::Boolean(true) => args.push(flag.clone()),
                    toml::Value::Boolean(false) => {}
                    toml::Value::String(s) if files.contains(&long) => {
                        args.push(flag.clone());
                        args.push(resolve(base, Path::new(s)).display().to_string());
                    }
                    toml::Value::String(s) => args.extend([flag.clone(), s.clone()]),
                    toml::Value::Integer(n) => args.extend([flag.clone(), n.to_string()]),
                    toml::Value::Float(x) => args.extend([flag.clone(), x.to_string()]),
                    _ => {
                        return Err(Problem::CheckOption(format!(
                            "{key}: write a string, a number, true, or a list of them"
                        )));
                    }
                }
            }
        }
        self.args = args;
        Ok(())
    }

    /// A method needs a URL; the options are read by check_jsonrpc's own parser now, so a bad
    /// range, pointer or option name stops the deploy before it starts. Secret files are read
    /// when the gate runs, not here: commands that never check health must not need them.
    pub(super) fn check(&self) -> Result<(), Problem> {
        let args = self.check_args();
        if (self.method.is_some() || !args.is_empty()) && self.url.is_none() {
            return Err(Problem::MethodWithoutUrl);
        }
        let mut shown = Vec::with_capacity(args.len());
        let mut args = args.into_iter();
        while let Some(a) = args.next() {
            if a == "--bearer-file" || a == "--authorization-file" {
                args.next();
            } else {
                shown.push(a);
            }
        }
        match nagios_plugin::parse_argv_only(
            ["check_jsonrpc", "-H", "localhost"]
                .into_iter()
                .map(String::from)
                .chain(shown),
        ) {
            Err(nagios_plugin::Early::Bad(why) | nagios_plugin::Early::Info(why)) => {
                Err(Problem::CheckOption(format!(
                    "{why} ([health] keys are check_jsonrpc's long options, with underscores)"
                )))
            }
            Ok(_) => Ok(()),
        }
    }

    /// The in-process check's options as check_jsonrpc arguments (`--expect V` …).
    pub fn check_args(&self) -> Vec<String> {
        self.args.clone()
    }
}

fn default_retries() -> u32 {
    10
}

fn default_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(10)
}
