//! What one check is asked to do: [`CheckConfig`], with the plugin's defaults.

use crate::assertion::{Assertion, Measure};
use plugin_api::{Range, State};
use serde_json::{Value, json};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_SIZE: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

/// `-C warn[,crit]`: fewer days left than `warning` is WARNING, fewer than `critical` (or an
/// expired certificate) CRITICAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertDays {
    pub warning: u32,
    pub critical: Option<u32>,
}

impl std::str::FromStr for CertDays {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("-C {s:?}: write days as WARN or WARN,CRIT (e.g. 30,14)");
        let (w, c) = match s.split_once(',') {
            Some((w, c)) => (w, Some(c)),
            None => (s, None),
        };
        let warning = w.trim().parse::<u32>().map_err(|_| bad())?;
        let critical = c
            .map(|c| c.trim().parse::<u32>().map_err(|_| bad()))
            .transpose()?;
        if critical.is_some_and(|c| c > warning) {
            return Err(format!(
                "-C {s:?}: the critical days must not exceed the warning days"
            ));
        }
        Ok(Self { warning, critical })
    }
}

/// Everything one check needs. `CheckConfig::new(url, method)` gives the plugin's defaults.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    pub url: String,
    /// Connect here instead of resolving the URL's host (`-I`); Host and SNI stay the URL's.
    pub connect_ip: Option<IpAddr>,
    pub ip_family: Option<IpFamily>,
    pub timeout: Duration,
    pub timeout_state: State,
    pub insecure: bool,
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain and its key (PEM files) to present (`--client-cert`,
    /// `--client-key`; one file may hold both).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// An `http://[user:password@]host:port` proxy (`--proxy`); `None`: the environment's
    /// (`ALL_PROXY`, `HTTPS_PROXY`, `HTTP_PROXY`, with `NO_PROXY`), if any.
    pub proxy: Option<String>,
    /// Days of certificate validity left below which to warn / go critical (`-C`).
    pub cert_days: Option<CertDays>,
    pub headers: Vec<(String, String)>,
    pub method: String,
    pub params: Option<Value>,
    pub id: Value,
    /// Thresholds on the response time in seconds.
    pub warning: Option<Range>,
    pub critical: Option<Range>,
    pub assertions: Vec<Assertion>,
    pub measure: Option<Measure>,
    pub value_warning: Option<Range>,
    pub value_critical: Option<Range>,
    pub label: Option<String>,
    pub max_size: u64,
    pub verbose: u8,
}

impl CheckConfig {
    pub fn new(url: impl Into<String>, method: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connect_ip: None,
            ip_family: None,
            timeout: DEFAULT_TIMEOUT,
            timeout_state: State::Critical,
            insecure: false,
            ca_file: None,
            client_cert: None,
            proxy: None,
            cert_days: None,
            headers: Vec::new(),
            method: method.into(),
            params: None,
            id: json!(1),
            warning: None,
            critical: None,
            assertions: Vec::new(),
            measure: None,
            value_warning: None,
            value_critical: None,
            label: None,
            max_size: DEFAULT_MAX_SIZE,
            verbose: 0,
        }
    }

    /// The request body this check sends.
    pub fn request_body(&self) -> String {
        let mut req = json!({"jsonrpc": "2.0", "method": self.method, "id": self.id});
        if let Some(p) = &self.params {
            req["params"] = p.clone();
        }
        req.to_string()
    }
}

/// A URL fit to print: its `user:password@` shown as `***@`, so a proxy's password never
/// reaches the plugin's output (the monitoring UI, notifications, the deployer's errors).
pub fn without_password(url: &str) -> String {
    // Without a scheme the text starts with the authority (`user:password@host:port`).
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_urls_carry_no_password() {
        assert_eq!(
            without_password("http://u:s3cret@proxy:3128/"),
            "http://***@proxy:3128/"
        );
        assert_eq!(without_password("http://proxy:3128"), "http://proxy:3128");
        assert_eq!(
            without_password("http://proxy:3128/a@b"),
            "http://proxy:3128/a@b"
        );
        assert_eq!(without_password("proxy:3128"), "proxy:3128");
        assert_eq!(without_password("u:pw@proxy:3128"), "***@proxy:3128");
    }
}
