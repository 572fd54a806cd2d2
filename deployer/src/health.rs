//! The health gate after publish: per host, a JSON-RPC call through the `nagios-plugin` library
//! (in-process), and/or any Nagios plugin command run locally; `{host}` in either is replaced by
//! the host's name. A host is healthy when every configured check passes (state OK, exit 0);
//! each is tried up to `retries + 1` times, `interval` apart.

use crate::config::Health;
use nagios_plugin::State;
use nagios_plugin::check::{CheckConfig, run};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    pub fn wait_healthy(&self, host: &str) -> Result<String, String> {
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(self.interval);
            }
            match self.check_once(host) {
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

    fn check_once(&self, host: &str) -> Result<String, String> {
        let mut said = Vec::new();
        if let Some(url) = &self.url {
            let mut cfg = CheckConfig::new(url.replace("{host}", &url_host(host)), &self.method);
            cfg.timeout = self.timeout;
            let out = run(&cfg);
            let line = out.render().lines().next().unwrap_or_default().to_owned();
            if out.state != State::Ok {
                return Err(line);
            }
            said.push(line);
        }
        if let Some(cmd) = &self.command {
            let cmd = cmd.replace("{host}", &crate::ssh::quote(host));
            said.push(run_plugin(&cmd, self.timeout)?);
        }
        Ok(said.join("; "))
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
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(out) = stdout.as_mut() {
            let _ = out.take(64 * 1024).read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{cmd:?} did not finish within {}",
                    humantime::format_duration(timeout)
                ));
            }
        }
    };
    let out = reader.join().unwrap_or_default();
    let line = out.lines().next().unwrap_or_default().trim().to_owned();
    match status.code() {
        Some(0) => Ok(line),
        Some(code) => Err(format!("{cmd:?} exited {code}: {line}")),
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

    #[test]
    fn plugin_commands_decide_by_exit_status() {
        assert_eq!(
            gate("echo OK - {host} fine", 0).wait_healthy("app1"),
            Ok("OK - app1 fine".into())
        );
        let e = gate("echo CRITICAL - down; exit 2", 2)
            .wait_healthy("app1")
            .expect_err("unhealthy");
        assert!(
            e.contains("after 3 checks") && e.contains("CRITICAL - down"),
            "{e}"
        );
        // The host name is quoted: no injection through it.
        assert!(gate("test {host} = 'a b'", 0).wait_healthy("a b").is_ok());
    }
}
