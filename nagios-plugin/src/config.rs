//! What one check is asked to do: [`CheckConfig`], with the plugin's defaults.

use crate::assertion::{Assertion, BadPointer, JsonType, Measure, check_pointer};
use plugin_api::{Range, State};
use serde_json::{Value, json};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How long a check may take in all unless told otherwise (`-t`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest response body accepted unless told otherwise (`--max-size`), in bytes: 8 MiB.
pub const DEFAULT_MAX_SIZE: u64 = 8 * 1024 * 1024;

/// The one IP version to connect with (`-4`, `-6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

/// `-C warn[,crit]`, as check_http judges: `warning` or fewer whole days of validity left is
/// WARNING, `critical` or fewer (or an expired certificate) CRITICAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertDays {
    /// WARNING at this many whole days left (rounded down) or fewer.
    pub warning: u32,
    /// CRITICAL at this many whole days left or fewer; `None`: 0 (less than a day left).
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
    /// The endpoint's full `http://` or `https://` URL.
    pub url: String,
    /// Connect here instead of resolving the URL's host (`-I`); Host and SNI stay the URL's.
    pub connect_ip: Option<IpAddr>,
    /// Connect over IPv4 or IPv6 only (`-4`, `-6`); `None`: either.
    pub ip_family: Option<IpFamily>,
    /// The most the whole check may take (`-t`) [default: 10 s].
    pub timeout: Duration,
    /// The state reported when the timeout hits (`--timeout-state`) [default: CRITICAL].
    pub timeout_state: State,
    /// Do not verify the server's certificate (`--insecure`).
    pub insecure: bool,
    /// Trust the CA certificates in this PEM file instead of the built-in roots (`--ca-file`).
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain and its key (PEM files) to present (`--client-cert`,
    /// `--client-key`; one file may hold both).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// An `http://[user:password@]host:port` proxy (`--proxy`); `None`: the environment's
    /// (`ALL_PROXY`, `HTTPS_PROXY`, `HTTP_PROXY`, with `NO_PROXY`), if any.
    pub proxy: Option<String>,
    /// Also judge the server certificate's days of validity left (`-C`).
    pub cert_days: Option<CertDays>,
    /// Extra request headers, name and value, Authorization included (`-k`, `-a`, `--bearer`).
    pub headers: Vec<(String, String)>,
    /// The JSON-RPC method to call.
    pub method: String,
    /// The call's `params`: a JSON array or object; `None`: the member is left out.
    pub params: Option<Value>,
    /// The request `id` (a JSON number or string); the response must carry the same.
    pub id: Value,
    /// Warning threshold on the response time in seconds (`-w`).
    pub warning: Option<Range>,
    /// Critical threshold on the response time in seconds (`-c`).
    pub critical: Option<Range>,
    /// `--expect` and `--expect-type`: each failing one makes the check CRITICAL.
    pub(crate) assertions: Vec<Assertion>,
    /// `--value` or `--count`: the number judged by `value_warning` and `value_critical`.
    pub(crate) measure: Option<Measure>,
    /// Warning threshold on the measured value (`--value-warning`); needs a measure.
    pub value_warning: Option<Range>,
    /// Critical threshold on the measured value (`--value-critical`); needs a measure.
    pub value_critical: Option<Range>,
    /// Perfdata label of the measured value (`--label`) [default: `value` or `count`].
    pub label: Option<String>,
    /// The largest response body accepted, in bytes; a larger one is CRITICAL (`--max-size`).
    pub max_size: u64,
    /// Detail on the lines after the first, 0–3 (`-v` each).
    pub verbose: u8,
}

impl CheckConfig {
    /// A check calling `method` at `url`, with the plugin's defaults: no thresholds, no
    /// assertions, id 1, verification on, 10 s timeout, 8 MiB body limit.
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

    /// Expects the result's value at `pointer` (RFC 6901; `""` is the result itself) to equal
    /// `value`, as `--expect POINTER=JSON` does.
    pub fn expect(mut self, pointer: &str, value: Value) -> Result<Self, BadPointer> {
        check_pointer(pointer)?;
        self.assertions.push(Assertion::Equals {
            pointer: pointer.to_owned(),
            value,
        });
        Ok(self)
    }

    /// Expects the result's value at `pointer` to be of type `ty`, as `--expect-type` does.
    pub fn expect_type(mut self, pointer: &str, ty: JsonType) -> Result<Self, BadPointer> {
        check_pointer(pointer)?;
        self.assertions.push(Assertion::Type {
            pointer: pointer.to_owned(),
            ty,
        });
        Ok(self)
    }

    /// Measures the number at `pointer` against `value_warning`/`value_critical`, as
    /// `--value` does (replacing any measure set before).
    pub fn measure_value(mut self, pointer: &str) -> Result<Self, BadPointer> {
        check_pointer(pointer)?;
        self.measure = Some(Measure::Value(pointer.to_owned()));
        Ok(self)
    }

    /// Measures the length of the array or object at `pointer`, as `--count` does.
    pub fn measure_count(mut self, pointer: &str) -> Result<Self, BadPointer> {
        check_pointer(pointer)?;
        self.measure = Some(Measure::Count(pointer.to_owned()));
        Ok(self)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_built_in_code_judges_as_its_flags_would() -> Result<(), Box<dyn std::error::Error>> {
        let cfg = CheckConfig::new("http://x/", "version")
            .expect("/name", json!("usersvc"))?
            .expect_type("/users", JsonType::Array)?
            .measure_count("/users")?;
        let cfg = CheckConfig {
            value_critical: Some("1:".parse()?),
            ..cfg
        };
        let body = |users: &str| {
            format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"name":"usersvc","users":{users}}}}}"#)
        };
        let judge =
            |b: String| crate::evaluate(&cfg, 200, None, "application/json", b.as_bytes(), 0.1);
        let ok = judge(body("[1, 2]"));
        assert_eq!(ok.state, State::Ok, "{}", ok.summary);
        assert!(
            ok.summary.contains("count(/users) = 2, 2 expectations met"),
            "{}",
            ok.summary
        );
        assert_eq!(judge(body("[]")).state, State::Critical);
        assert_eq!(judge(body("{}")).state, State::Critical);
        assert_eq!(
            CheckConfig::new("http://x/", "m")
                .expect("name", json!(1))
                .err(),
            Some(BadPointer("name".into()))
        );
        Ok(())
    }

    #[test]
    fn printed_urls_carry_no_password() {
        use toolkit_core::redact::url;
        assert_eq!(
            url("http://u:s3cret@proxy:3128/"),
            "http://u:***@proxy:3128/"
        );
        assert_eq!(url("http://proxy:3128"), "http://proxy:3128");
        assert_eq!(url("proxy:3128"), "proxy:3128");
        assert_eq!(url("u:pw@proxy:3128"), "u:***@proxy:3128");
    }
}
