//! The health gate after publish: per host, a JSON-RPC call through the `nagios-plugin` library
//! (in-process), and/or any Nagios plugin command run locally. In either, `{host}` is replaced by
//! the host's name, `{release}` and `{revision}` by the release that should now answer, so the
//! gate can check that it is the new release that serves. A host is healthy when every configured check passes (state OK, exit 0);
//! each is tried up to `retries + 1` times, `interval` apart.

use crate::config::Health;
use nagios_plugin::State;
use nagios_plugin::check::{CheckConfig, run};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Gate {
    pub url: Option<String>,
    pub method: String,
    pub command: Option<String>,
    pub retries: u32,
    pub interval: Duration,
    pub timeout: Duration,
}

impl Gate {
    /// `None` when `[health]` configures no check.
    pub fn new(h: &Health) -> Result<Option<Self>, String> {
        if h.url.is_none() && h.command.is_none() {
            return Ok(None);
        }
        Ok(Some(Self {
            url: h.url.clone(),
            method: h.method.clone().unwrap_or_else(|| "ping".into()),
            command: h.command.clone(),
            retries: h.retries,
            interval: h.interval()?,
            timeout: h.timeout()?,
        }))
    }

    /// Tries until healthy or out of retries; the last check's output either way.
    pub fn wait_healthy(&self, subject: &Subject) -> Result<String, String> {
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(self.interval);
            }
            match self.check_once(subject) {
                Ok(out) => return Ok(out),
                Err(e) => last = e,
            }
        }
        Err(format!(
            "unhealthy after {} checks {} apart: {last}",
            self.retries + 1,
            humantime::format_duration(self.interval)
        ))
    }

    fn check_once(&self, subject: &Subject) -> Result<String, String> {
        let mut said = Vec::new();
        if let Some(url) = &self.url {
            let url = subject.fill(url, |field, value| match field {
                "host" => url_host(value),
                _ => value.to_owned(),
            });
            let mut cfg = CheckConfig::new(url, &self.method);
            cfg.timeout = self.timeout;
            let out = run(&cfg);
            let line = out.render().lines().next().unwrap_or_default().to_owned();
            if out.state != State::Ok {
                return Err(line);
            }
            said.push(line);
        }
        if let Some(cmd) = &self.command {
            let cmd = subject.fill(cmd, |field, value| match field {
                "host" => crate::ssh::quote(value),
                _ => crate::ssh::quote_word(value),
            });
            said.push(run_plugin(&cmd, self.timeout)?);
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

/// Runs a plugin command with `sh -c`; exit 0 is healthy. Killed after `timeout`.
fn run_plugin(cmd: &str, timeout: Duration) -> Result<String, String> {
    let run = plugin_api::run_shell(cmd, timeout).map_err(|e| e.to_string())?;
    match run.code {
        Some(0) => Ok(run.first_line),
        _ if run.timed_out => Err(format!("{cmd:?}: {}", run.first_line)),
        Some(code) => Err(format!("{cmd:?} exited {code}: {}", run.first_line)),
        None => Err(format!("{cmd:?} was killed by a signal")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(command: &str, retries: u32) -> Gate {
        Gate {
            url: None,
            method: "ping".into(),
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
            gate("echo OK - {host} fine", 0).wait_healthy(&on("app1")),
            Ok("OK - app1 fine".into())
        );
        let e = gate("echo CRITICAL - down; exit 2", 2)
            .wait_healthy(&on("app1"))
            .expect_err("unhealthy");
        assert!(
            e.contains("after 3 checks") && e.contains("CRITICAL - down"),
            "{e}"
        );
        // The host name is quoted: no injection through it.
        assert!(
            gate("test {host} = 'a b'", 0)
                .wait_healthy(&on("a b"))
                .is_ok()
        );
    }

    #[test]
    fn release_and_revision_are_substituted() {
        assert_eq!(
            gate("echo '/revision=\"{revision}\"' {release}", 0).wait_healthy(&on("app1")),
            Ok("/revision=\"abc123\" 20261123201500".into())
        );
        // An odd revision is quoted: it arrives whole and runs nothing.
        let odd = Subject {
            revision: "a b;touch /tmp/x",
            ..on("app1")
        };
        assert_eq!(
            gate("printf %s {revision}", 0).wait_healthy(&odd),
            Ok("a b;touch /tmp/x".into())
        );
    }
}
