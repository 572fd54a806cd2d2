//! One check: send the JSON-RPC request, validate the envelope, evaluate the assertions and
//! thresholds, and say it as a plugin: a state, a one-line summary, perfdata, details.

use crate::State;
use crate::assertion::{Assertion, Measure, brief, show};
use crate::envelope::{self, Answer};
use crate::perfdata::Perf;
use crate::range::Range;
use serde_json::{Value, json};
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_SIZE: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
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

/// The plugin's verdict.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub state: State,
    pub summary: String,
    pub perfdata: Vec<Perf>,
    /// Lines after the first (shown with -v); never perfdata.
    pub details: Vec<String>,
}

impl Outcome {
    pub fn new(state: State, summary: impl Into<String>) -> Self {
        Self {
            state,
            summary: summary.into(),
            perfdata: Vec::new(),
            details: Vec::new(),
        }
    }

    /// `JSONRPC STATE - summary | perfdata`, then the details, one per line.
    pub fn render(&self) -> String {
        // A '|' in the summary would start perfdata early; newlines would split the first line.
        let summary: String = self
            .summary
            .chars()
            .map(|c| match c {
                '|' => '/',
                '\n' | '\r' => ' ',
                c => c,
            })
            .collect();
        let mut out = format!("JSONRPC {} - {summary}", self.state);
        if !self.perfdata.is_empty() {
            out.push_str(" | ");
            let perf: Vec<String> = self.perfdata.iter().map(ToString::to_string).collect();
            out.push_str(&perf.join(" "));
        }
        for line in &self.details {
            out.push('\n');
            out.push_str(&line.replace('|', "/"));
        }
        out
    }
}

/// Connects to a fixed address (`-I`) whatever the URL's host is.
#[derive(Debug)]
struct FixedResolver(SocketAddr);

impl Resolver for FixedResolver {
    fn resolve(
        &self,
        _uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let mut addrs = self.empty();
        addrs.push(self.0);
        Ok(addrs)
    }
}

fn agent(cfg: &CheckConfig) -> Result<ureq::Agent, String> {
    let mut tls = ureq::tls::TlsConfig::builder().disable_verification(cfg.insecure);
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read --ca-file {}: {e}", path.display()))?;
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(format!(
                "--ca-file {} holds no PEM certificate",
                path.display()
            ));
        }
        tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)));
    }
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(cfg.timeout))
        .max_redirects(0)
        .tls_config(tls.build())
        .user_agent(format!(
            "check_jsonrpc/{} (monitoring-plugins)",
            env!("CARGO_PKG_VERSION")
        ));
    config = match cfg.ip_family {
        Some(IpFamily::V4) => config.ip_family(ureq::config::IpFamily::Ipv4Only),
        Some(IpFamily::V6) => config.ip_family(ureq::config::IpFamily::Ipv6Only),
        None => config,
    };
    let config = config.build();
    Ok(match cfg.connect_ip {
        Some(ip) => {
            let uri: ureq::http::Uri = cfg
                .url
                .parse()
                .map_err(|e| format!("bad URL {}: {e}", cfg.url))?;
            let https = uri.scheme_str() == Some("https");
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            ureq::Agent::with_parts(
                config,
                DefaultConnector::new(),
                FixedResolver(SocketAddr::new(ip, port)),
            )
        }
        None => ureq::Agent::new_with_config(config),
    })
}

/// What went wrong on the wire, as a state and a reason. `sending`: no response head arrived yet
/// (on https, that includes the TLS handshake).
fn transport_failure(cfg: &CheckConfig, e: &ureq::Error, sending: bool) -> Outcome {
    let secs = cfg.timeout.as_secs_f64();
    let handshake = sending && cfg.url.starts_with("https://");
    let (state, why) = match e {
        ureq::Error::Timeout(_) => (
            cfg.timeout_state,
            format!("no complete answer within {secs} s (-t)"),
        ),
        ureq::Error::HostNotFound => (State::Critical, "host not found (DNS)".to_owned()),
        ureq::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                (State::Critical, "connection refused".to_owned())
            }
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => (
                cfg.timeout_state,
                format!("no complete answer within {secs} s (-t)"),
            ),
            // rustls reports handshake errors through the I/O layer; a peer that does not speak
            // TLS often just closes the connection on our ClientHello.
            std::io::ErrorKind::InvalidData
            | std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
                if handshake =>
            {
                (
                    State::Critical,
                    format!("TLS failure: {io} (does the server speak TLS?)"),
                )
            }
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => (
                State::Critical,
                format!("connection closed before the response was complete ({io})"),
            ),
            // std reports getaddrinfo failures as uncategorized I/O errors; its text is all we have.
            _ if io.to_string().contains("lookup address") => {
                (State::Critical, format!("host not found (DNS): {io}"))
            }
            _ => (State::Critical, format!("I/O error: {io}")),
        },
        ureq::Error::Tls(msg) => (State::Critical, format!("TLS failure: {msg}")),
        ureq::Error::Rustls(r) => (State::Critical, format!("TLS failure: {r}")),
        ureq::Error::BodyExceedsLimit(n) => (
            State::Critical,
            format!("response body larger than {n} bytes (--max-size)"),
        ),
        ureq::Error::BadUri(u) => (State::Unknown, format!("bad URL: {u}")),
        ureq::Error::ConnectionFailed => (State::Critical, "connection failed".to_owned()),
        ureq::Error::Protocol(p) => (State::Critical, format!("HTTP protocol error: {p}")),
        other => (State::Critical, other.to_string()),
    };
    Outcome::new(state, format!("{}: {why}", cfg.url))
}

/// Runs the check. Never panics on anything the network or the server can send.
pub fn run(cfg: &CheckConfig) -> Outcome {
    let agent = match agent(cfg) {
        Ok(a) => a,
        Err(why) => return Outcome::new(State::Unknown, why),
    };
    let body = cfg.request_body();
    let mut details = Vec::new();
    if cfg.verbose >= 1 {
        details.push(format!("POST {} {}", cfg.url, brief_text(&body, 500)));
    }
    let started = Instant::now();
    let mut req = agent
        .post(&cfg.url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json");
    for (k, v) in &cfg.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let mut resp = match req.send(body.as_bytes()) {
        Ok(r) => r,
        Err(e) => {
            let mut o = transport_failure(cfg, &e, true);
            o.details = details;
            return o;
        }
    };
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if cfg.verbose >= 3 {
        for (k, v) in resp.headers() {
            details.push(format!("< {k}: {}", v.to_str().unwrap_or("(binary)")));
        }
    }
    // Read at most max_size + 1 bytes ourselves: going over is then detected without buffering more.
    let mut bytes = Vec::new();
    let read = resp
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .reader()
        .take(cfg.max_size + 1)
        .read_to_end(&mut bytes);
    let elapsed = started.elapsed().as_secs_f64();
    if let Err(e) = read {
        let e = match e.downcast::<ureq::Error>() {
            Ok(u) => u,
            Err(io) => ureq::Error::Io(io),
        };
        let mut o = transport_failure(cfg, &e, false);
        o.details = details;
        return o;
    }
    if bytes.len() as u64 > cfg.max_size {
        let mut o = Outcome::new(
            State::Critical,
            format!(
                "response body larger than {} bytes (--max-size)",
                cfg.max_size
            ),
        );
        o.details = details;
        return o;
    }
    if cfg.verbose >= 1 {
        details.push(format!(
            "HTTP {status}, {} bytes, {content_type}, {elapsed:.6} s",
            bytes.len()
        ));
    }
    if cfg.verbose >= 2 {
        details.push(brief_text(&String::from_utf8_lossy(&bytes), 4000));
    }
    let mut o = evaluate(
        cfg,
        status.as_u16(),
        status.canonical_reason(),
        &content_type,
        &bytes,
        elapsed,
    );
    o.details = details;
    o
}

fn brief_text(s: &str, max: usize) -> String {
    if s.chars().count() > max {
        format!(
            "{}… ({} bytes)",
            s.chars().take(max).collect::<String>(),
            s.len()
        )
    } else {
        s.to_owned()
    }
}

fn is_json_type(ct: &str) -> bool {
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Judges a complete HTTP response (separate from I/O so every rule is testable without a socket).
pub fn evaluate(
    cfg: &CheckConfig,
    status: u16,
    reason: Option<&str>,
    content_type: &str,
    body: &[u8],
    elapsed: f64,
) -> Outcome {
    let time_perf = Perf::new("time", elapsed, "s")
        .thresholds(cfg.warning.as_ref(), cfg.critical.as_ref())
        .bounds(Some(0.0), Some(cfg.timeout.as_secs_f64()));
    let size_perf = Perf::new("size", body.len() as f64, "B").bounds(Some(0.0), None);
    let perfdata = vec![time_perf, size_perf];
    let fail = |state: State, why: String| Outcome {
        state,
        summary: why,
        perfdata: perfdata.clone(),
        details: Vec::new(),
    };
    if !(200..300).contains(&status) {
        let reason = reason.unwrap_or("");
        let mut why = format!("HTTP {status} {reason}").trim_end().to_owned();
        if !content_type.is_empty() && !is_json_type(content_type) {
            why.push_str(&format!(" ({content_type} body, not a JSON-RPC response)"));
        }
        return fail(State::Critical, why);
    }
    if !is_json_type(content_type) {
        let shown = if content_type.is_empty() {
            "missing"
        } else {
            content_type
        };
        return fail(
            State::Critical,
            format!("HTTP {status} but Content-Type is {shown}, not application/json"),
        );
    }
    let answer = match envelope::validate(body, &cfg.id) {
        Ok(a) => a,
        Err(v) => return fail(State::Critical, v.to_string()),
    };
    let result = match answer {
        Answer::Result(r) => r,
        Answer::Error {
            code,
            message,
            data,
        } => {
            let data = data
                .map(|d| format!(" ({})", brief(&d)))
                .unwrap_or_default();
            return fail(
                State::Critical,
                format!("{}: JSON-RPC error {code}: {message}{data}", cfg.method),
            );
        }
    };

    let mut state = State::Ok;
    let mut problems = Vec::new();
    let mut perfdata = perfdata;
    for a in &cfg.assertions {
        if let Some(why) = a.failure(&result) {
            state = state.worst(State::Critical);
            problems.push(why);
        }
    }
    let mut measured = None;
    if let Some(m) = &cfg.measure {
        let label = cfg
            .label
            .clone()
            .unwrap_or_else(|| m.default_label().to_owned());
        match m.extract(&result) {
            Ok(v) => {
                let what = match m {
                    Measure::Value(p) => show(p).to_owned(),
                    Measure::Count(p) => format!("count({})", show(p)),
                };
                let mut s = State::Ok;
                let mut note = String::new();
                if let Some(c) = cfg.value_critical.as_ref().filter(|c| c.alerts(v)) {
                    s = State::Critical;
                    note = format!(" (outside critical range {c})");
                } else if let Some(w) = cfg.value_warning.as_ref().filter(|w| w.alerts(v)) {
                    s = State::Warning;
                    note = format!(" (outside warning range {w})");
                }
                let line = format!("{what} = {}{note}", crate::perfdata::num(v));
                if s == State::Ok {
                    measured = Some(line);
                } else {
                    problems.push(line);
                }
                state = state.worst(s);
                perfdata.push(
                    Perf::new(label, v, "")
                        .thresholds(cfg.value_warning.as_ref(), cfg.value_critical.as_ref()),
                );
            }
            Err(why) => {
                state = state.worst(State::Critical);
                problems.push(why);
            }
        }
    }
    let time_state = if cfg.critical.as_ref().is_some_and(|c| c.alerts(elapsed)) {
        State::Critical
    } else if cfg.warning.as_ref().is_some_and(|w| w.alerts(elapsed)) {
        State::Warning
    } else {
        State::Ok
    };
    if time_state != State::Ok {
        let flag = if time_state == State::Critical {
            "-c"
        } else {
            "-w"
        };
        problems.push(format!("response time {elapsed:.3} s outside {flag} range"));
        state = state.worst(time_state);
    }

    let mut summary = if problems.is_empty() {
        let mut s = format!("{} returned {}", cfg.method, brief(&result));
        if let Some(m) = measured {
            s = format!("{} returned, {m}", cfg.method);
        }
        if !cfg.assertions.is_empty() {
            let n = cfg.assertions.len();
            s.push_str(&format!(
                ", {n} expectation{} met",
                if n == 1 { "" } else { "s" }
            ));
        }
        s
    } else {
        format!("{}: {}", cfg.method, problems.join(", "))
    };
    summary.push_str(&format!(" in {elapsed:.3} s"));
    Outcome {
        state,
        summary,
        perfdata,
        details: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CheckConfig {
        let mut c = CheckConfig::new("http://x/", "get_users");
        c.id = json!(7);
        c
    }

    fn judge(c: &CheckConfig, body: &str) -> Outcome {
        evaluate(
            c,
            200,
            Some("OK"),
            "application/json",
            body.as_bytes(),
            0.01,
        )
    }

    #[test]
    fn http_level_failures() {
        let c = cfg();
        let o = evaluate(&c, 502, Some("Bad Gateway"), "text/html", b"<html>", 0.01);
        assert_eq!(o.state, State::Critical);
        assert!(o.summary.contains("HTTP 502 Bad Gateway"), "{}", o.summary);
        let o = evaluate(&c, 200, Some("OK"), "text/html", b"<html>", 0.01);
        assert!(
            o.summary.contains("Content-Type is text/html"),
            "{}",
            o.summary
        );
    }

    #[test]
    fn thresholds_and_assertions() {
        let mut c = cfg();
        c.measure = Some(Measure::Count("".into()));
        c.value_warning = Some("2".parse().expect("range"));
        c.value_critical = Some("5".parse().expect("range"));
        c.assertions
            .push(Assertion::parse_type("=array").expect("valid"));
        let ok = judge(&c, r#"{"jsonrpc":"2.0","result":[1,2],"id":7}"#);
        assert_eq!(ok.state, State::Ok, "{}", ok.render());
        assert!(ok.render().starts_with("JSONRPC OK - get_users returned, count(result) = 2, 1 expectation met in 0.010 s | time=0.01s;;;0;10 size="));
        assert!(ok.render().ends_with(" count=2;2;5"), "{}", ok.render());
        let warn = judge(&c, r#"{"jsonrpc":"2.0","result":[1,2,3],"id":7}"#);
        assert_eq!(warn.state, State::Warning, "{}", warn.render());
        let crit = judge(&c, r#"{"jsonrpc":"2.0","result":[1,2,3,4,5,6],"id":7}"#);
        assert_eq!(crit.state, State::Critical);
        assert!(
            crit.summary
                .contains("count(result) = 6 (outside critical range 5)"),
            "{}",
            crit.summary
        );
        let wrong = judge(&c, r#"{"jsonrpc":"2.0","result":{"a":1},"id":7}"#);
        assert_eq!(wrong.state, State::Critical);
        assert!(
            wrong
                .summary
                .contains("result is an object, expected array"),
            "{}",
            wrong.summary
        );
    }

    #[test]
    fn response_time_thresholds() {
        let mut c = cfg();
        c.warning = Some("0.5".parse().expect("range"));
        c.critical = Some("1".parse().expect("range"));
        let body = r#"{"jsonrpc":"2.0","result":"pong","id":7}"#;
        let at = |t: f64| evaluate(&c, 200, None, "application/json", body.as_bytes(), t).state;
        assert_eq!(at(0.1), State::Ok);
        assert_eq!(at(0.7), State::Warning);
        assert_eq!(at(1.5), State::Critical);
    }

    #[test]
    fn render_keeps_perfdata_on_the_first_line() {
        let mut o = Outcome::new(State::Ok, "a | b\nc");
        o.perfdata.push(Perf::new("time", 0.5, "s"));
        o.details.push("detail | x".into());
        assert_eq!(o.render(), "JSONRPC OK - a / b c | time=0.5s\ndetail / x");
    }
}
