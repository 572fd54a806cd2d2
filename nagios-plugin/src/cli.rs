//! Command-line interface, named after check_http's options. Every way argument handling can end
//! (help, version, a bad argument) is mapped onto the plugin contract: exit 3 with one line.

use crate::assertion::{Assertion, Measure};
use crate::config::{CertDays, CheckConfig, DEFAULT_MAX_SIZE, IpFamily};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};
use plugin_api::Range;
use plugin_api::State;
use serde_json::Value;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

const AFTER_HELP: &str = "\
Thresholds use the Monitoring Plugins range syntax: 10 (alert outside 0..10), 10: (below 10),
~:10 (above 10), 10:20 (outside 10..20), @10:20 (inside 10..20). A malformed range is UNKNOWN.

JSON pointers (RFC 6901) address the result member: \"\" is the result itself, /users its
\"users\" member, /users/0/name the first user's name.

Exit codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. Connection refused, DNS and TLS failures
are CRITICAL; a timeout is CRITICAL unless --timeout-state says otherwise.

Examples:
  check_jsonrpc -H app1 -p 8080 -m ping --expect '=\"pong\"'
  check_jsonrpc -H app1 -p 8080 -m get_users --count '' --value-warning 1: --value-critical 1:
  check_jsonrpc -H node -p 8545 -m eth_blockNumber --value '' --value-critical 1:
  check_jsonrpc -H api.example.com -S -u /rpc --bearer-file /etc/nagios4/api.token -w 0.5 -c 2
  check_jsonrpc -H api.example.com -S -C 30,14        (the call, and the certificate's days left)
  check_jsonrpc -H app1 -S --client-cert /etc/nagios4/client.pem --proxy http://proxy:3128

-C checks the certificate in the same run as the call (check_http's -C checks only the
certificate): the worse of the two states is the result, the days left are in the output and in
the perfdata (certificate_days). An expired certificate is CRITICAL.

Secrets: prefer --bearer-file, --authorization-file or CHECK_JSONRPC_BEARER to --bearer and -a,
which any local user can read in ps.";

#[derive(Parser, Debug)]
#[command(
    name = "check_jsonrpc",
    version,
    about = "Calls a JSON-RPC 2.0 method over HTTP and checks the answer (a Nagios/Icinga plugin)",
    after_help = AFTER_HELP,
    disable_help_flag = true,
)]
pub(crate) struct Args {
    /// Print this help and exit (UNKNOWN, as the guidelines ask)
    #[arg(short = 'h', long = "help", action = ArgAction::Help)]
    help: Option<bool>,

    /// Host name to connect to, also sent as Host and TLS SNI
    #[arg(short = 'H', long = "hostname", value_name = "HOST")]
    hostname: Option<String>,

    /// IP address to connect to instead of resolving HOST
    #[arg(short = 'I', long = "IP-address", value_name = "ADDRESS")]
    ip_address: Option<IpAddr>,

    /// Port [default: 80, or 443 with --ssl]
    #[arg(short = 'p', long = "port")]
    port: Option<u16>,

    /// Path of the endpoint, or a full http(s):// URL (then -H is optional)
    #[arg(short = 'u', long = "url", value_name = "PATH", default_value = "/")]
    url: String,

    /// Use HTTPS (TLS with SNI)
    #[arg(short = 'S', long = "ssl")]
    ssl: bool,

    /// Do not verify the server's certificate
    #[arg(long = "insecure")]
    insecure: bool,

    /// Trust the CA certificates in this PEM file instead of the built-in roots
    #[arg(long = "ca-file", value_name = "FILE")]
    ca_file: Option<PathBuf>,

    /// Present this client certificate (PEM, chain allowed) to a server that asks for one
    #[arg(long = "client-cert", value_name = "FILE")]
    client_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM) [default: the --client-cert file]
    #[arg(long = "client-key", value_name = "FILE", requires = "client_cert")]
    client_key: Option<PathBuf>,

    /// Go through this HTTP proxy (http://[USER:PASSWORD@]HOST:PORT) [default: ALL_PROXY,
    /// HTTPS_PROXY or HTTP_PROXY from the environment, except hosts in NO_PROXY]
    #[arg(long = "proxy", value_name = "URL")]
    proxy: Option<String>,

    /// Also check the server certificate, as check_http: WARNING with WARN or fewer whole days
    /// of validity left, CRITICAL with CRIT or fewer (default 0: less than a day) or expired
    /// (needs https)
    #[arg(short = 'C', long = "certificate", value_name = "WARN[,CRIT]")]
    certificate: Option<String>,

    /// Seconds before giving up, fractions allowed
    #[arg(
        short = 't',
        long = "timeout",
        value_name = "SECONDS",
        default_value = "10"
    )]
    timeout: f64,

    /// State when the timeout hits: ok, warning, critical or unknown
    #[arg(
        long = "timeout-state",
        value_name = "STATE",
        default_value = "critical"
    )]
    timeout_state: String,

    /// Response time range (seconds) for WARNING
    #[arg(short = 'w', long = "warning", value_name = "RANGE")]
    warning: Option<String>,

    /// Response time range (seconds) for CRITICAL
    #[arg(short = 'c', long = "critical", value_name = "RANGE")]
    critical: Option<String>,

    /// HTTP basic auth as USER:PASSWORD (visible in ps: prefer --authorization-file)
    #[arg(short = 'a', long = "authorization", value_name = "USER:PASSWORD")]
    authorization: Option<String>,

    /// HTTP basic auth read from FILE (USER:PASSWORD, a trailing newline dropped)
    #[arg(
        long = "authorization-file",
        value_name = "FILE",
        conflicts_with = "authorization"
    )]
    authorization_file: Option<std::path::PathBuf>,

    /// Send Authorization: Bearer TOKEN (visible in ps: prefer --bearer-file or the environment)
    #[arg(
        long = "bearer",
        value_name = "TOKEN",
        env = "CHECK_JSONRPC_BEARER",
        hide_env_values = true
    )]
    bearer: Option<String>,

    /// Send Authorization: Bearer with the token read from FILE (a trailing newline dropped)
    #[arg(long = "bearer-file", value_name = "FILE", conflicts_with = "bearer")]
    bearer_file: Option<std::path::PathBuf>,

    /// Extra header "Name: value" (repeatable; each at most 32 KiB)
    #[arg(short = 'k', long = "header", value_name = "HEADER")]
    header: Vec<String>,

    /// Use IPv4 only
    #[arg(short = '4', conflicts_with = "ipv6")]
    ipv4: bool,

    /// Use IPv6 only
    #[arg(short = '6')]
    ipv6: bool,

    /// JSON-RPC method to call
    #[arg(short = 'm', long = "method", default_value = "ping")]
    method: String,

    /// Params as JSON: an array (by position) or an object (by name)
    #[arg(long = "params", value_name = "JSON")]
    params: Option<String>,

    /// Request id as JSON (a number or a string) [default: a number unique to this run]
    #[arg(long = "id", value_name = "JSON")]
    id: Option<String>,

    /// Expect the JSON value at POINTER in the result to equal JSON (repeatable)
    #[arg(long = "expect", value_name = "POINTER=JSON")]
    expect: Vec<String>,

    /// Expect the value at POINTER to be of TYPE: null, boolean, number, integer, string, array,
    /// object
    #[arg(long = "expect-type", value_name = "POINTER=TYPE")]
    expect_type: Vec<String>,

    /// Measure the number at POINTER (a JSON number, or a numeric or 0x-hex string)
    #[arg(long = "value", value_name = "POINTER", conflicts_with = "count")]
    value: Option<String>,

    /// Measure the length of the array or object at POINTER
    #[arg(long = "count", value_name = "POINTER")]
    count: Option<String>,

    /// Range for WARNING on the measured value
    #[arg(long = "value-warning", value_name = "RANGE")]
    value_warning: Option<String>,

    /// Range for CRITICAL on the measured value
    #[arg(long = "value-critical", value_name = "RANGE")]
    value_critical: Option<String>,

    /// Perfdata label of the measured value [default: value or count]
    #[arg(long = "label", value_name = "LABEL")]
    label: Option<String>,

    /// Largest response body to accept, in bytes
    #[arg(long = "max-size", value_name = "BYTES", default_value_t = DEFAULT_MAX_SIZE)]
    max_size: u64,

    /// More detail on the lines after the first (up to -vvv)
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    verbose: u8,
}

fn range(flag: &str, text: &Option<String>) -> Result<Option<Range>, String> {
    text.as_deref()
        .map(|t| t.parse::<Range>().map_err(|e| format!("{flag}: {e}")))
        .transpose()
}

/// An id that differs between runs, so a response cached or mixed up by a proxy is caught.
fn fresh_id() -> Value {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Value::from(u64::from(std::process::id()) * 1_000_000_000 + u64::from(nanos))
}

impl Args {
    /// Checks the arguments as a whole and builds the check: each phase below reads the raw
    /// arguments it owns and returns them checked (ripgrep's low → high arguments).
    pub(crate) fn into_config(self) -> Result<CheckConfig, String> {
        let url = self.url()?;
        if !(self.timeout.is_finite() && self.timeout > 0.0 && self.timeout <= 86_400.0) {
            return Err(format!("-t {}: must be seconds above 0", self.timeout));
        }
        let timeout_state = State::parse(&self.timeout_state).ok_or_else(|| {
            format!(
                "--timeout-state {:?}: use ok, warning, critical or unknown",
                self.timeout_state
            )
        })?;
        let headers = self.headers()?;
        let (params, id) = (self.params()?, self.id()?);
        let expected = self.expectations()?;
        let cert_days = self.certificate_days(&url)?;
        self.check_proxy(cert_days.is_some())?;
        Ok(CheckConfig {
            url,
            connect_ip: self.ip_address,
            ip_family: match (self.ipv4, self.ipv6) {
                (true, _) => Some(IpFamily::V4),
                (_, true) => Some(IpFamily::V6),
                _ => None,
            },
            timeout: Duration::from_secs_f64(self.timeout),
            timeout_state,
            insecure: self.insecure,
            client_cert: self.client_cert.map(|cert| {
                let key = self.client_key.unwrap_or_else(|| cert.clone());
                (cert, key)
            }),
            ca_file: self.ca_file,
            proxy: self.proxy,
            cert_days,
            headers,
            method: self.method,
            params,
            id,
            warning: range("-w", &self.warning)?,
            critical: range("-c", &self.critical)?,
            assertions: expected.assertions,
            measure: expected.measure,
            value_warning: expected.value_warning,
            value_critical: expected.value_critical,
            label: self.label,
            max_size: self.max_size,
            verbose: self.verbose,
        })
    }

    /// `-u` as given when it is a full URL, else built from `-H`/`-I`, `-S`, `-p` and `-u`'s path.
    fn url(&self) -> Result<String, String> {
        if self.url.starts_with("http://") || self.url.starts_with("https://") {
            return Ok(self.url.clone());
        }
        let host = match (&self.hostname, &self.ip_address) {
            (Some(h), _) => h.clone(),
            (None, Some(IpAddr::V6(ip))) => format!("[{ip}]"),
            (None, Some(ip)) => ip.to_string(),
            (None, None) => {
                return Err("-H/--hostname (or -I, or a full URL in -u) is required".into());
            }
        };
        if host.contains('/') || host.contains(' ') {
            return Err(format!("-H {host:?} is not a host name"));
        }
        let scheme = if self.ssl { "https" } else { "http" };
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        let path = if self.url.starts_with('/') {
            self.url.clone()
        } else {
            format!("/{}", self.url)
        };
        Ok(format!("{scheme}://{host}{port}{path}"))
    }

    /// Basic (`-a` or its file), bearer (`--bearer` or its file), then each `-k`.
    fn headers(&self) -> Result<Vec<(String, String)>, String> {
        let mut headers = Vec::new();
        let authorization = match &self.authorization_file {
            Some(path) => Some(secret("--authorization-file", path)?),
            None => self.authorization.clone(),
        };
        if let Some(auth) = &authorization {
            if !auth.contains(':') {
                return Err("-a/--authorization must be USER:PASSWORD".into());
            }
            headers.push((
                "Authorization".into(),
                format!("Basic {}", BASE64.encode(auth.as_bytes())),
            ));
        }
        let bearer = match &self.bearer_file {
            Some(path) => Some(secret("--bearer-file", path)?),
            None => self.bearer.clone(),
        };
        if let Some(token) = &bearer {
            headers.push(("Authorization".into(), format!("Bearer {token}")));
        }
        for h in &self.header {
            let (k, v) = h
                .split_once(':')
                .filter(|(k, _)| !k.trim().is_empty() && !k.contains(' '))
                .ok_or_else(|| format!("-k {h:?}: write \"Name: value\""))?;
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        Ok(headers)
    }

    fn params(&self) -> Result<Option<Value>, String> {
        match &self.params {
            None => Ok(None),
            Some(p) => match serde_json::from_str::<Value>(p) {
                Ok(v @ (Value::Array(_) | Value::Object(_))) => Ok(Some(v)),
                Ok(_) => Err("--params must be a JSON array or object".into()),
                Err(e) => Err(format!("--params is not JSON: {e}")),
            },
        }
    }

    fn id(&self) -> Result<Value, String> {
        match &self.id {
            None => Ok(fresh_id()),
            Some(s) => match serde_json::from_str::<Value>(s) {
                Ok(v @ (Value::Number(_) | Value::String(_))) => Ok(v),
                _ => Err(format!("--id {s:?}: a JSON number or a quoted string")),
            },
        }
    }

    /// `--expect`, `--expect-type`, and `--value`/`--count` with their thresholds.
    fn expectations(&self) -> Result<Expected, String> {
        let mut assertions = Vec::new();
        for e in &self.expect {
            assertions.push(Assertion::parse_equals(e)?);
        }
        for e in &self.expect_type {
            assertions.push(Assertion::parse_type(e)?);
        }
        let measure = match (&self.value, &self.count) {
            (Some(p), _) => Some(Measure::Value(p.clone())),
            (None, Some(p)) => Some(Measure::Count(p.clone())),
            (None, None) => None,
        };
        if let Some(m) = &measure {
            m.validate()?;
        }
        let value_warning = range("--value-warning", &self.value_warning)?;
        let value_critical = range("--value-critical", &self.value_critical)?;
        if measure.is_none() && (value_warning.is_some() || value_critical.is_some()) {
            return Err("--value-warning/--value-critical need --value or --count".into());
        }
        Ok(Expected {
            assertions,
            measure,
            value_warning,
            value_critical,
        })
    }

    /// `-C`, which needs https.
    fn certificate_days(&self, url: &str) -> Result<Option<CertDays>, String> {
        let cert_days = self
            .certificate
            .as_deref()
            .map(str::parse::<CertDays>)
            .transpose()?;
        if cert_days.is_some() && !url.starts_with("https://") {
            return Err("-C needs https: add -S, or give an https:// URL in -u".into());
        }
        Ok(cert_days)
    }

    /// `--proxy`: an http(s) URL, not with `-I`, and only through http:// with `-C`.
    fn check_proxy(&self, checks_certificate: bool) -> Result<(), String> {
        let Some(p) = &self.proxy else {
            return Ok(());
        };
        let shown = toolkit_core::redact::url(p);
        if !(p.starts_with("http://") || p.starts_with("https://")) {
            return Err(format!(
                "--proxy {shown:?}: write http://HOST:PORT (user:password@ before the host if it asks)"
            ));
        }
        if self.ip_address.is_some() {
            return Err("-I and --proxy exclude each other: the proxy connects to the host".into());
        }
        if checks_certificate && p.starts_with("https://") {
            return Err(format!(
                "--proxy {shown:?}: -C checks the certificate through an http:// proxy only"
            ));
        }
        Ok(())
    }
}

/// What the result must hold: `--expect*` and the measured value's thresholds.
struct Expected {
    assertions: Vec<Assertion>,
    measure: Option<Measure>,
    value_warning: Option<Range>,
    value_critical: Option<Range>,
}

/// How argument handling ended when it did not produce a check.
pub enum Early {
    /// Help or version text: print it, exit 3.
    Info(String),
    /// A bad argument: one reason for the UNKNOWN line.
    Bad(String),
}

/// The plugin's command line as clap describes it: for completions and the man page.
pub(crate) fn command() -> clap::Command {
    Args::command()
}

/// The long options whose value is a file (`bearer-file`, `ca-file`, …): a caller that reads
/// options from a file of its own (the deployer's `[health]`) makes their relative paths that
/// file's directory's.
pub fn file_options() -> Vec<String> {
    Args::command()
        .get_arguments()
        .filter(|a| {
            a.get_value_names()
                .is_some_and(|names| names.iter().any(|n| n == "FILE"))
        })
        .filter_map(|a| a.get_long().map(str::to_owned))
        .collect()
}

/// Parses `argv` (program name first).
pub fn parse<I, T>(argv: I) -> Result<CheckConfig, Early>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    parse_with(Args::command(), argv)
}

/// The same, from `argv` alone: no option is taken from the environment (`CHECK_JSONRPC_BEARER`).
/// For a program that runs checks on its own behalf (the deployer's health gate), whose
/// environment is its operator's, not the check's: a token there must not reach every host.
pub fn parse_argv_only<I, T>(argv: I) -> Result<CheckConfig, Early>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    parse_with(argv_only(), argv)
}

/// The options without their environment variables.
fn argv_only() -> clap::Command {
    Args::command().mut_args(|a| a.env(None::<&str>))
}

fn parse_with<I, T>(command: clap::Command, argv: I) -> Result<CheckConfig, Early>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let parsed = command
        .try_get_matches_from(argv)
        .and_then(|m| Args::from_arg_matches(&m));
    match parsed {
        Ok(args) => args.into_config().map_err(Early::Bad),
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                Err(Early::Info(e.render().to_string()))
            }
            _ => {
                // clap's message spans lines ("error: …", a usage line, a tip): keep the first.
                let text = e.render().to_string();
                let first = text
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("invalid arguments")
                    .trim_start_matches("error: ")
                    .to_owned();
                Err(Early::Bad(format!("{first} (see --help)")))
            }
        },
    }
}

/// A secret read from a file: its content without the trailing newline; the error names the
/// file, never its content.
fn secret(flag: &str, path: &std::path::Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(format!("{flag} {}: the file is empty", path.display()));
    }
    Ok(secret.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_entry_reads_no_environment() {
        let with_env = Args::command();
        assert!(with_env.get_arguments().any(|a| a.get_env().is_some()));
        assert!(argv_only().get_arguments().all(|a| a.get_env().is_none()));
    }

    fn bad(args: &[&str]) -> String {
        let mut argv = vec!["check_jsonrpc"];
        argv.extend_from_slice(args);
        match parse(argv) {
            Err(Early::Bad(why)) => why,
            Err(Early::Info(_)) => panic!("{args:?}: printed help"),
            Ok(_) => panic!("{args:?} must be refused"),
        }
    }

    #[test]
    fn builds_urls_like_check_http() {
        let c = |args: &[&str]| {
            let mut argv = vec!["check_jsonrpc"];
            argv.extend_from_slice(args);
            parse(argv).ok().expect("valid").url
        };
        assert_eq!(c(&["-H", "app1"]), "http://app1/");
        assert_eq!(
            c(&["-H", "app1", "-p", "8080", "-u", "/rpc"]),
            "http://app1:8080/rpc"
        );
        assert_eq!(c(&["-H", "app1", "-S"]), "https://app1/");
        assert_eq!(c(&["-I", "::1", "-p", "1"]), "http://[::1]:1/");
        assert_eq!(c(&["-u", "https://x:9/a"]), "https://x:9/a");
    }

    #[test]
    fn bad_arguments_say_why_on_one_line() {
        for (args, needle) in [
            (&["-H", "x", "-w", "abc"][..], "-w"),
            (&["-H", "x", "-c", "10:5"][..], "-c"),
            (
                &["-H", "x", "--value", "/n", "--value-critical", "@"][..],
                "--value-critical",
            ),
            (&["-p", "80"][..], "--hostname"),
            (&["-H", "x", "--params", "{"][..], "--params"),
            (&["-H", "x", "--params", "3"][..], "--params"),
            (&["-H", "x", "--expect", "/a=nope"][..], "--expect"),
            (
                &["-H", "x", "--expect-type", "/a=float"][..],
                "--expect-type",
            ),
            (&["-H", "x", "-t", "0"][..], "-t"),
            (&["-H", "x", "-t", "abc"][..], "abc"),
            (
                &["-H", "x", "--timeout-state", "maybe"][..],
                "--timeout-state",
            ),
            (&["-H", "x", "--bogus"][..], "--bogus"),
            (&["-H", "x", "-p", "99999"][..], "99999"),
            (&["-H", "x", "--value-warning", "1"][..], "--value"),
            (
                &["-H", "x", "--value", "/a", "--count", "/b"][..],
                "--count",
            ),
            (&["-H", "x", "-k", "NoColon"][..], "-k"),
            (&["-H", "x", "-a", "nocolon"][..], "USER:PASSWORD"),
        ] {
            let why = bad(args);
            assert!(why.contains(needle), "{args:?}: {why}");
            assert!(!why.contains('\n'), "{args:?}: {why:?}");
        }
    }
}
