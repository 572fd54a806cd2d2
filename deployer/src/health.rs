//! The health gate after publish: per host, a JSON-RPC call through the `nagios-plugin` library
//! (in-process), and/or any Nagios plugin command run locally. In either, `{host}` is replaced by
//! the host's name, `{release}` and `{revision}` by the release that should now answer, so the
//! gate can check that it is the new release that serves. A host is healthy when every configured
//! check passes (state OK, exit 0);
//! each is tried up to `retries + 1` times, `interval` apart.

use crate::config::Health;
use nagios_plugin::State;
use nagios_plugin::run;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Gate {
    pub url: Option<String>,
    pub method: String,
    /// check_jsonrpc's options for the in-process check (`[health]` keys, as arguments).
    pub check_args: Vec<String>,
    pub command: Option<String>,
    pub retries: u32,
    pub interval: Duration,
    pub timeout: Duration,
}

/// The gate's verdict on a host that never passed.
#[derive(Debug, thiserror::Error)]
#[error("unhealthy after {checks} checks {} apart: {last}", humantime::format_duration(*interval))]
pub struct Unhealthy {
    pub checks: u32,
    pub interval: Duration,
    /// What the last check said.
    pub last: CheckFailed,
}

/// Why one check did not pass: the plugin's state and first line, never its command line (it
/// may carry a secret, and this text is recorded on every host).
#[derive(Debug, thiserror::Error)]
pub enum CheckFailed {
    /// The JSON-RPC check's status line, not OK.
    #[error("{0}")]
    NotOk(String),
    #[error("timed out: {line}")]
    TimedOut { line: String },
    #[error("{} (exit {code}): {line}", State::from_exit(Some(*code)))]
    Exited { code: i32, line: String },
    #[error("the check was killed by a signal")]
    Killed,
    #[error("{0}")]
    Template(String),
    #[error(transparent)]
    Run(#[from] plugin_api::RunError),
}

impl Gate {
    /// `None` when `[health]` configures no check.
    pub fn new(h: &Health) -> Option<Self> {
        if h.url.is_none() && h.command.is_none() {
            return None;
        }
        Some(Self {
            url: h.url.clone(),
            method: h.method.clone().unwrap_or_else(|| "ping".into()),
            check_args: h.check_args(),
            command: h.command.clone(),
            retries: h.retries,
            interval: h.interval,
            timeout: h.timeout,
        })
    }

    /// Tries until healthy or out of retries; what the passing check said.
    pub fn wait_healthy(&self, subject: &Subject) -> Result<String, Unhealthy> {
        let mut attempt = 0;
        loop {
            match self.check_once(subject) {
                Ok(out) => return Ok(out),
                Err(last) if attempt == self.retries => {
                    return Err(Unhealthy {
                        checks: self.retries + 1,
                        interval: self.interval,
                        last,
                    });
                }
                Err(_) => {}
            }
            attempt += 1;
            std::thread::sleep(self.interval);
        }
    }

    fn check_once(&self, subject: &Subject) -> Result<String, CheckFailed> {
        let mut said = Vec::new();
        if let Some(url) = &self.url {
            let url = subject.fill(url, |field, value| match field {
                "host" => url_host(value),
                _ => value.to_owned(),
            });
            // check_jsonrpc's own parser reads the options (placeholders filled per word); the
            // URL and method are the gate's.
            let args = ["check_jsonrpc", "-H", "localhost"]
                .into_iter()
                .map(String::from)
                .chain(
                    self.check_args
                        .iter()
                        .map(|a| subject.fill(a, |_, v| v.to_owned())),
                );
            let mut cfg = match nagios_plugin::parse_argv_only(args) {
                Ok(cfg) => cfg,
                Err(nagios_plugin::Early::Bad(why) | nagios_plugin::Early::Info(why)) => {
                    return Err(CheckFailed::Template(format!(
                        "check_jsonrpc options: {why}"
                    )));
                }
            };
            cfg.url = url;
            cfg.method = self.method.clone();
            cfg.timeout = self.timeout;
            let out = run(&cfg);
            let line = out.render().lines().next().unwrap_or_default().to_owned();
            if out.state != State::Ok {
                return Err(CheckFailed::NotOk(line));
            }
            said.push(line);
        }
        if let Some(cmd) = &self.command {
            said.push(run_plugin(&subject.argv(cmd)?, self.timeout)?);
        }
        Ok(said.join("; "))
    }
}

/// What the gate checks: a host, and the release that should answer there.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub host: &'a str,
    pub release: &'a str,
    pub revision: &'a str,
}

impl Subject<'_> {
    /// The command template split into words as a shell would (quotes and all), then each
    /// placeholder replaced inside its own word: a value is one argument, whatever it holds,
    /// and no shell ever reads it.
    fn argv(&self, template: &str) -> Result<Vec<String>, CheckFailed> {
        let words = shlex::split(template).ok_or_else(|| {
            CheckFailed::Template(
                "the check command has an unclosed quote or a trailing backslash".into(),
            )
        })?;
        if words.is_empty() {
            return Err(CheckFailed::Template("the check command is empty".into()));
        }
        Ok(words
            .iter()
            .map(|w| self.fill(w, |_, value| value.to_owned()))
            .collect())
    }

    /// Replaces `{host}`, `{release}` and `{revision}` in `template`, each value passed through
    /// `encode` (URL or shell quoting).
    fn fill(&self, template: &str, encode: impl Fn(&str, &str) -> String) -> String {
        [
            ("host", self.host),
            ("release", self.release),
            ("revision", self.revision),
        ]
        .iter()
        .fold(template.to_owned(), |t, (field, value)| {
            t.replace(&format!("{{{field}}}"), &encode(field, value))
        })
    }
}

/// IPv6 literals need brackets inside a URL.
fn url_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Runs a plugin (program and arguments, no shell); exit 0 is healthy. Killed after `timeout`.
fn run_plugin(argv: &[String], timeout: Duration) -> Result<String, CheckFailed> {
    let run = plugin_api::run_argv(argv, timeout)?;
    match run.code {
        Some(0) => Ok(run.first_line),
        _ if run.timed_out => Err(CheckFailed::TimedOut {
            line: run.first_line,
        }),
        Some(code) => Err(CheckFailed::Exited {
            code,
            line: run.first_line,
        }),
        None => Err(CheckFailed::Killed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(command: &str, retries: u32) -> Gate {
        Gate {
            url: None,
            method: "ping".into(),
            check_args: Vec::new(),
            command: Some(command.into()),
            retries,
            interval: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
        }
    }

    fn on(host: &str) -> Subject<'_> {
        Subject {
            host,
            release: "20261123201500",
            revision: "abc123",
        }
    }

    #[test]
    fn plugin_commands_decide_by_exit_status() {
        assert_eq!(
            gate("sh -c 'echo OK - $0 fine' {host}", 0)
                .wait_healthy(&on("app1"))
                .expect("healthy"),
            "OK - app1 fine"
        );
        let e = gate("sh -c 'echo CRITICAL - down; exit 2'", 2)
            .wait_healthy(&on("app1"))
            .expect_err("unhealthy")
            .to_string();
        assert!(
            e.contains("after 3 checks") && e.contains("CRITICAL (exit 2): CRITICAL - down"),
            "{e}"
        );
        // What a failure says never holds the command line (it may carry a secret).
        let e = gate("sh -c 'exit 2' --bearer s3cret", 0)
            .wait_healthy(&on("app1"))
            .expect_err("unhealthy")
            .to_string();
        assert!(!e.contains("s3cret"), "{e}");
        // The host is one argument, whatever it holds.
        assert!(
            gate("test {host} = 'a b'", 0)
                .wait_healthy(&on("a b"))
                .is_ok()
        );
    }

    #[test]
    fn release_and_revision_are_substituted() {
        assert_eq!(
            gate("echo '/revision=\"{revision}\"' {release}", 0)
                .wait_healthy(&on("app1"))
                .expect("healthy"),
            "/revision=\"abc123\" 20261123201500"
        );
        // A hostile or odd revision arrives as one argument, unchanged, and runs nothing, even
        // inside quotes of the template.
        let dir = tempfile::tempdir().expect("temp dir");
        let pwned = dir.path().join("PWNED");
        for template in [
            "printf %s {revision}",
            "printf %s '{revision}'",
            "printf %s \"x{revision}\"",
        ] {
            let odd = format!("a b';$(touch {})'", pwned.display());
            let subject = Subject {
                revision: &odd,
                ..on("app1")
            };
            let said = gate(template, 0).wait_healthy(&subject).expect("healthy");
            assert!(said.ends_with(&odd), "{template}: {said}");
            assert!(!pwned.exists(), "{template} ran the revision");
        }
        let bad = gate("printf 'unclosed", 0).wait_healthy(&on("app1"));
        assert!(
            bad.expect_err("template")
                .to_string()
                .contains("unclosed quote")
        );
    }
}
