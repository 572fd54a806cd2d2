//! The HTTP exchange of one check (ureq): TLS options, `-I`, the size limit, and what went wrong
//! on the wire as a plugin state. The complete response goes to [`crate::evaluate`].

use crate::certificate;
use crate::config::{CertDays, CheckConfig, IpFamily};
use crate::evaluate::evaluate;
use crate::outcome::Outcome;
use crate::tls::{TlsFileError, TlsFiles};
use plugin_api::State;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

/// The longest response head (status line and headers), and the longest line of a request's
/// head (its request line or one header: ureq writes the head a line at a time), in bytes.
pub const HEAD_LIMIT: usize = 32 * 1024;

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

/// The check cannot even be sent as configured: UNKNOWN, as the guidelines say.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error(transparent)]
    File(#[from] TlsFileError),
    #[error("bad URL {url}: {source}")]
    Url {
        url: String,
        source: ureq::http::uri::InvalidUri,
    },
    #[error("--proxy {}: {source}", toolkit_core::redact::url(url))]
    Proxy { url: String, source: ureq::Error },
}

/// The proxy the call goes through: `--proxy`, else the environment's (unless `NO_PROXY`
/// exempts the URL's host, or `-I` names the address to connect to).
fn proxy(cfg: &CheckConfig) -> Result<Option<ureq::Proxy>, SetupError> {
    match &cfg.proxy {
        Some(url) => ureq::Proxy::new(url)
            .map(Some)
            .map_err(|source| SetupError::Proxy {
                url: url.clone(),
                source,
            }),
        // -I connects to that address: an environment proxy would be asked to instead.
        None if cfg.connect_ip.is_some() => Ok(None),
        None => Ok(ureq::Proxy::try_from_env().filter(|p| {
            cfg.url
                .parse::<ureq::http::Uri>()
                .is_ok_and(|uri| !p.is_no_proxy(&uri))
        })),
    }
}

/// The TLS settings: verification (unless `--insecure`), the CA file's roots, a client cert.
fn tls_config(cfg: &CheckConfig, files: &TlsFiles) -> Result<ureq::tls::TlsConfig, SetupError> {
    let mut tls = ureq::tls::TlsConfig::builder().disable_verification(cfg.insecure);
    if let Some(certs) = &files.ca {
        let certs = certs
            .iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)));
    }
    if let (Some((chain, _)), Some((_, key_path))) = (&files.client, &cfg.client_cert) {
        let chain: Vec<_> = chain
            .iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        let key = ureq::tls::parse_pem(&files.client_key_pem)
            .find_map(|item| match item {
                Ok(ureq::tls::PemItem::PrivateKey(k)) => Some(k.to_owned()),
                _ => None,
            })
            .ok_or_else(|| TlsFileError::NoKey(key_path.clone()))?;
        tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
    }
    Ok(tls.build())
}

fn agent(
    cfg: &CheckConfig,
    files: &TlsFiles,
    proxy: Option<ureq::Proxy>,
) -> Result<ureq::Agent, SetupError> {
    let has_proxy = proxy.is_some();
    let tls = tls_config(cfg, files)?;
    let mut config = ureq::Agent::config_builder()
        .proxy(proxy)
        .http_status_as_error(false)
        .timeout_global(Some(cfg.timeout))
        .max_redirects(0)
        // ureq's buffers are 128 KiB each, zeroed when first used: a third of a run's page
        // faults, for heads that are a few hundred bytes. The input buffer is a little larger
        // than the head limit, so a longer head is refused by name, not as a stalled read.
        .input_buffer_size(HEAD_LIMIT + 4096)
        .output_buffer_size(HEAD_LIMIT)
        .max_response_header_size(HEAD_LIMIT)
        .tls_config(tls)
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
    let uri: ureq::http::Uri = cfg.url.parse().map_err(|source| SetupError::Url {
        url: toolkit_core::redact::url(&cfg.url),
        source,
    })?;
    // A host that is an IP address needs no lookup: ureq's own resolver would start a thread to
    // bound one (a timeout is set), a tenth of a run that takes a few milliseconds. Not through
    // a proxy, whose own address the resolver is asked for.
    let literal = uri
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .and_then(|h| h.parse::<std::net::IpAddr>().ok())
        .filter(|ip| match cfg.ip_family {
            Some(IpFamily::V4) => ip.is_ipv4(),
            Some(IpFamily::V6) => ip.is_ipv6(),
            None => true,
        })
        .filter(|_| !has_proxy);
    Ok(match cfg.connect_ip.or(literal) {
        Some(ip) => {
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
        ureq::Error::Io(io) => io_failure(cfg, io, handshake),
        ureq::Error::Tls(msg) => (State::Critical, format!("TLS failure: {msg}")),
        ureq::Error::Rustls(r) => (State::Critical, format!("TLS failure: {r}")),
        ureq::Error::BodyExceedsLimit(n) => (
            State::Critical,
            format!("response body larger than {n} bytes (--max-size)"),
        ),
        ureq::Error::BadUri(u) => (State::Unknown, format!("bad URL: {u}")),
        ureq::Error::ConnectionFailed => (State::Critical, "connection failed".to_owned()),
        ureq::Error::LargeResponseHeader(_, limit) => (
            State::Critical,
            format!("response head larger than {limit} bytes"),
        ),
        // Our own request did not fit: a header or the URL given to the plugin is too long.
        ureq::Error::Protocol(ureq_proto::Error::OutputOverflow) => (
            State::Unknown,
            format!(
                "a request header or the request line is longer than {HEAD_LIMIT} bytes: \
                 shorten the header (-k, -a, --bearer, their files) or the URL (-u)"
            ),
        ),
        ureq::Error::Protocol(p) => (State::Critical, format!("HTTP protocol error: {p}")),
        other => (State::Critical, other.to_string()),
    };
    Outcome::new(
        state,
        format!("{}: {why}", toolkit_core::redact::url(&cfg.url)),
    )
}

/// An I/O error as a state and a reason; `handshake`: on https, before any answer.
fn io_failure(cfg: &CheckConfig, io: &std::io::Error, handshake: bool) -> (State, String) {
    let secs = cfg.timeout.as_secs_f64();
    match io.kind() {
        std::io::ErrorKind::ConnectionRefused => (State::Critical, "connection refused".to_owned()),
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
        // std reports getaddrinfo failures as uncategorized I/O errors; its text is all we
        // have.
        _ if io.to_string().contains("lookup address") => {
            (State::Critical, format!("host not found (DNS): {io}"))
        }
        _ => (State::Critical, format!("I/O error: {io}")),
    }
}

/// Runs the check: the call, then (with `-C`) the certificate; the worse state wins. Never
/// panics on anything the network or the server can send.
pub fn run(cfg: &CheckConfig) -> Outcome {
    let deadline = Instant::now() + cfg.timeout;
    let prepared = TlsFiles::load(cfg)
        .map_err(SetupError::from)
        .and_then(|files| Ok((proxy(cfg)?, files)));
    let (proxy, files) = match prepared {
        Ok(p) => p,
        Err(why) => return Outcome::new(State::Unknown, why.to_string()),
    };
    let agent = match agent(cfg, &files, proxy.clone()) {
        Ok(a) => a,
        Err(why) => return Outcome::new(State::Unknown, why.to_string()),
    };
    let mut outcome = call(cfg, &agent);
    if let Some(limits) = &cfg.cert_days {
        add_certificate(&mut outcome, cfg, limits, &files, proxy.as_ref(), deadline);
    }
    outcome
}

/// Adds the certificate's verdict to the call's: the worse state, its text after the call's,
/// its perfdata after the call's.
fn add_certificate(
    outcome: &mut Outcome,
    cfg: &CheckConfig,
    limits: &CertDays,
    files: &TlsFiles,
    proxy: Option<&ureq::Proxy>,
    deadline: Instant,
) {
    match certificate::fetch(cfg, files, proxy, deadline) {
        Ok(presented) => {
            let (state, text, perf) =
                certificate::judge(&presented, limits, std::time::SystemTime::now());
            outcome.state = outcome.state.worst(state);
            outcome.summary = format!("{}; {text}", outcome.summary);
            outcome.perfdata.push(perf);
        }
        Err(e) => {
            // The certificate could not be checked: as check_http, at least UNKNOWN; a call
            // that failed already says worse.
            outcome.state = outcome.state.worst(State::Unknown);
            outcome.summary = format!("{}; certificate not checked: {e}", outcome.summary);
        }
    }
}

fn call(cfg: &CheckConfig, agent: &ureq::Agent) -> Outcome {
    let mut details = Vec::new();
    let mut outcome = exchange(cfg, agent, &mut details);
    outcome.details = details;
    outcome
}

/// Sends the request and judges the answer; what `-v` asks to see goes to `details` on the way.
fn exchange(cfg: &CheckConfig, agent: &ureq::Agent, details: &mut Vec<String>) -> Outcome {
    let body = cfg.request_body();
    if cfg.verbose >= 1 {
        let url = toolkit_core::redact::url(&cfg.url);
        details.push(format!("POST {url} {}", brief_text(&body, 500)));
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
        Err(e) => return transport_failure(cfg, &e, true),
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
    let bytes = match read_body(cfg, &mut resp) {
        Ok(bytes) => bytes,
        Err(outcome) => return outcome,
    };
    let elapsed = started.elapsed().as_secs_f64();
    if cfg.verbose >= 1 {
        details.push(format!(
            "HTTP {status}, {} bytes, {content_type}, {elapsed:.6} s",
            bytes.len()
        ));
    }
    if cfg.verbose >= 2 {
        details.push(brief_text(&String::from_utf8_lossy(&bytes), 4000));
    }
    evaluate(
        cfg,
        status.as_u16(),
        status.canonical_reason(),
        &content_type,
        &bytes,
        elapsed,
    )
}

/// The body, at most `--max-size` bytes of it; a larger one, or a read that fails, is the
/// verdict instead.
fn read_body(
    cfg: &CheckConfig,
    resp: &mut ureq::http::Response<ureq::Body>,
) -> Result<Vec<u8>, Outcome> {
    // Read at most max_size + 1 bytes ourselves: going over is then detected without buffering
    // more.
    let mut bytes = Vec::new();
    let read = resp
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .reader()
        .take(cfg.max_size + 1)
        .read_to_end(&mut bytes);
    if let Err(e) = read {
        let e = match e.downcast::<ureq::Error>() {
            Ok(u) => u,
            Err(io) => ureq::Error::Io(io),
        };
        return Err(transport_failure(cfg, &e, false));
    }
    if bytes.len() as u64 > cfg.max_size {
        return Err(Outcome::new(
            State::Critical,
            format!(
                "response body larger than {} bytes (--max-size)",
                cfg.max_size
            ),
        ));
    }
    Ok(bytes)
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
