//! The server certificate's expiry (`-C warn[,crit]`, in days, as check_http and check_curl):
//! a TLS handshake of its own to the same address as the call (`-I`, the proxy, the client
//! certificate), which records the certificate the server presents. It is recorded even when
//! verification then fails, so an expired certificate is reported with its date.

use crate::config::{CertDays, CheckConfig};
use crate::tls::TlsFiles;
use base64::Engine;
use plugin_api::{Perf, Range, State};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use x509_cert::der::Decode;

/// What the server presented.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Presented {
    /// Its subject's common name, or the whole subject when it has none.
    pub subject: String,
    pub not_after: SystemTime,
    /// `notAfter` as the certificate writes it (RFC 3339, UTC).
    pub not_after_text: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CertError {
    #[error("-C needs an https URL (-S, or https:// in -u)")]
    NotTls,
    #[error("cannot connect to {target} for the certificate: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("the proxy refused to connect to {target}: {line}")]
    Proxy { target: String, line: String },
    #[error("the server presented no certificate ({0})")]
    NoCertificate(String),
    #[error("the server's certificate cannot be read: {0}")]
    Unreadable(String),
    #[error("{0}")]
    Setup(String),
}

/// Records the server's end-entity certificate, then verifies as the call would.
#[derive(Debug)]
struct Recording {
    inner: Option<Arc<dyn ServerCertVerifier>>,
    schemes: Vec<SignatureScheme>,
    seen: Mutex<Option<Vec<u8>>>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(end_entity.to_vec());
        }
        match &self.inner {
            Some(v) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
            None => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match &self.inner {
            Some(v) => v.verify_tls12_signature(message, cert, dss),
            None => Ok(HandshakeSignatureValid::assertion()),
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match &self.inner {
            Some(v) => v.verify_tls13_signature(message, cert, dss),
            None => Ok(HandshakeSignatureValid::assertion()),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

fn tls_config(
    files: &TlsFiles,
    recording: Arc<Recording>,
) -> Result<rustls::ClientConfig, CertError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CertError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(recording);
    match &files.client {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| CertError::Setup(format!("--client-cert/--client-key: {e}"))),
        None => Ok(builder.with_no_client_auth()),
    }
}

fn verifier(cfg: &CheckConfig, files: &TlsFiles) -> Result<Recording, CertError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    if cfg.insecure {
        return Ok(Recording {
            inner: None,
            schemes,
            seen: Mutex::new(None),
        });
    }
    let mut roots = rustls::RootCertStore::empty();
    match &files.ca {
        Some(certs) => {
            for c in certs.iter() {
                roots
                    .add(c.clone())
                    .map_err(|e| CertError::Setup(format!("--ca-file: {e}")))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let inner =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| CertError::Setup(e.to_string()))?;
    Ok(Recording {
        inner: Some(inner),
        schemes,
        seen: Mutex::new(None),
    })
}

/// Connects within `deadline`, directly or through an HTTP proxy's CONNECT.
fn connect(
    cfg: &CheckConfig,
    proxy: Option<&ureq::Proxy>,
    host: &str,
    port: u16,
    deadline: Instant,
) -> Result<TcpStream, CertError> {
    let target = format!("{host}:{port}");
    let connect_err = |source| CertError::Connect {
        target: target.clone(),
        source,
    };
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    if let Some(p) = proxy
        && p.protocol() != ureq::ProxyProtocol::Http
    {
        return Err(CertError::Setup(format!(
            "the certificate is checked only through an http:// proxy, not {}",
            toolkit_core::redact::url(&p.uri().to_string())
        )));
    }
    let addrs = addresses(cfg, proxy, host, port).map_err(connect_err)?;
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, left()) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let stream = stream.ok_or_else(|| connect_err(last))?;
    stream.set_read_timeout(Some(left())).map_err(connect_err)?;
    stream
        .set_write_timeout(Some(left()))
        .map_err(connect_err)?;
    match proxy {
        Some(p) => tunnel(p, stream, &target, deadline),
        None => Ok(stream),
    }
}

/// Where to connect: the proxy, `-I`'s address, or what `host` resolves to in the family
/// `-4`/`-6` asks for.
fn addresses(
    cfg: &CheckConfig,
    proxy: Option<&ureq::Proxy>,
    host: &str,
    port: u16,
) -> std::io::Result<Vec<SocketAddr>> {
    Ok(match (proxy, cfg.connect_ip) {
        (Some(p), _) => (p.host(), p.port()).to_socket_addrs()?.collect(),
        (None, Some(ip)) => vec![SocketAddr::new(ip, port)],
        (None, None) => (host.trim_matches(['[', ']']), port)
            .to_socket_addrs()?
            .filter(|a| match cfg.ip_family {
                Some(crate::config::IpFamily::V4) => a.is_ipv4(),
                Some(crate::config::IpFamily::V6) => a.is_ipv6(),
                None => true,
            })
            .collect(),
    })
}

/// Asks the HTTP proxy for a tunnel to `target`; reads at most 16 KiB of its answer.
fn tunnel(
    proxy: &ureq::Proxy,
    mut stream: TcpStream,
    target: &str,
    deadline: Instant,
) -> Result<TcpStream, CertError> {
    let io = |source| CertError::Connect {
        target: target.to_owned(),
        source,
    };
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(user) = proxy.username() {
        let pair = format!("{user}:{}", proxy.password().unwrap_or(""));
        let basic = base64::engine::general_purpose::STANDARD.encode(pair);
        req.push_str(&format!("Proxy-Authorization: Basic {basic}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).map_err(io)?;
    let mut reader = BufReader::new((&stream).take(16 * 1024));
    let mut status = String::new();
    reader.read_line(&mut status).map_err(io)?;
    let ok = status
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code.starts_with('2'));
    if !ok {
        return Err(CertError::Proxy {
            target: target.to_owned(),
            line: status.trim().chars().take(200).collect(),
        });
    }
    loop {
        if Instant::now() >= deadline {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the proxy did not finish its answer within the timeout (-t)",
            )));
        }
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(io)? == 0 || line.trim().is_empty() {
            break;
        }
    }
    // The proxy says nothing more until the TLS client speaks: nothing is left buffered.
    drop(reader);
    Ok(stream)
}

/// Shakes hands with the server (through `proxy`, an HTTP proxy, when given) and returns the
/// certificate it presented.
pub(crate) fn fetch(
    cfg: &CheckConfig,
    files: &TlsFiles,
    proxy: Option<&ureq::Proxy>,
    deadline: Instant,
) -> Result<Presented, CertError> {
    let uri: ureq::http::Uri = cfg.url.parse().map_err(|e| {
        CertError::Setup(format!(
            "bad URL {}: {e}",
            toolkit_core::redact::url(&cfg.url)
        ))
    })?;
    if uri.scheme_str() != Some("https") {
        return Err(CertError::NotTls);
    }
    let host = uri.host().unwrap_or("").to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let recording = Arc::new(verifier(cfg, files)?);
    let config = Arc::new(tls_config(files, recording.clone())?);
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|e| CertError::Setup(format!("{host}: {e}")))?;
    let mut conn =
        rustls::ClientConnection::new(config, name).map_err(|e| CertError::Setup(e.to_string()))?;
    let mut tcp = connect(cfg, proxy, &host, port, deadline)?;
    let mut handshake = Ok(());
    while conn.is_handshaking() {
        // Socket timeouts are per call: set to what is left each time, so a peer that trickles
        // bytes cannot stretch the whole past the deadline.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            handshake = Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no TLS handshake within the timeout (-t)",
            ));
            break;
        }
        let _ = tcp.set_read_timeout(Some(left));
        let _ = tcp.set_write_timeout(Some(left));
        if let Err(e) = conn.complete_io(&mut tcp) {
            handshake = Err(e);
            break;
        }
    }
    let seen = recording.seen.lock().ok().and_then(|mut s| s.take());
    let der = match (seen, handshake) {
        (Some(der), _) => der,
        (None, Err(e)) => return Err(CertError::NoCertificate(e.to_string())),
        (None, Ok(())) => return Err(CertError::NoCertificate("handshake done".into())),
    };
    read(&der)
}

/// Reads the subject and expiry of a DER certificate.
pub(crate) fn read(der: &[u8]) -> Result<Presented, CertError> {
    let cert =
        x509_cert::Certificate::from_der(der).map_err(|e| CertError::Unreadable(e.to_string()))?;
    let tbs = &cert.tbs_certificate;
    let common_name = tbs
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find_map(|atv| atv.to_string().strip_prefix("CN=").map(str::to_owned));
    Ok(Presented {
        subject: common_name.unwrap_or_else(|| tbs.subject.to_string()),
        not_after: tbs.validity.not_after.to_system_time(),
        not_after_text: tbs.validity.not_after.to_string(),
    })
}

/// The certificate's state, its part of the summary and its perfdata, as check_http judges:
/// whole days left (rounded down) at most `warn` is WARNING, at most `crit` (0 unless given:
/// less than a day left) or expired is CRITICAL.
pub(crate) fn judge(p: &Presented, limits: &CertDays, now: SystemTime) -> (State, String, Perf) {
    let secs = match p.not_after.duration_since(now) {
        Ok(left) => left.as_secs() as i64,
        Err(past) => -(past.duration().as_secs() as i64),
    };
    let days = secs.div_euclid(86_400);
    let crit = i64::from(limits.critical.unwrap_or(0));
    let state = if secs < 0 || days <= crit {
        State::Critical
    } else if days <= i64::from(limits.warning) {
        State::Warning
    } else {
        State::Ok
    };
    let subject = &p.subject;
    let when = &p.not_after_text;
    let text = if secs < 0 {
        format!("certificate '{subject}' expired on {when}")
    } else if days == 0 {
        format!(
            "certificate '{subject}' expires in {} hours ({when})",
            secs / 3600
        )
    } else {
        format!("certificate '{subject}' expires in {days} days ({when})")
    };
    // "@~:30" alerts at 30 or fewer: the limit as given, in the guidelines' range syntax.
    let at_most = |d: i64| format!("@~:{d}").parse::<Range>().ok();
    let perf = Perf::new("certificate_days", days as f64, "")
        .thresholds(
            at_most(i64::from(limits.warning)).as_ref(),
            at_most(crit).as_ref(),
        )
        .bounds(Some(0.0), None);
    (state, text, perf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presented(days_left: f64, now: SystemTime) -> Presented {
        let span = Duration::from_secs_f64(days_left.abs() * 86_400.0);
        let at = if days_left < 0.0 {
            now - span
        } else {
            now + span
        };
        Presented {
            subject: "app1".into(),
            not_after: at,
            not_after_text: "2026-12-11T00:00:00Z".into(),
        }
    }

    #[test]
    fn days_left_against_warn_and_crit_as_check_http() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let limits = |w, c| CertDays {
            warning: w,
            critical: c,
        };
        let (s, text, perf) = judge(&presented(10.5, now), &limits(30, None), now);
        assert_eq!(s, State::Warning);
        assert!(text.contains("expires in 10 days"), "{text}");
        assert_eq!(perf.to_string(), "certificate_days=10;@~:30;@~:0;0");
        assert_eq!(
            judge(&presented(10.5, now), &limits(30, Some(14)), now).0,
            State::Critical
        );
        assert_eq!(
            judge(&presented(40.0, now), &limits(30, Some(14)), now).0,
            State::Ok
        );
        // At the limit is inside it, as check_http's `days_left <= warn`.
        assert_eq!(
            judge(&presented(30.2, now), &limits(30, None), now).0,
            State::Warning
        );
        assert_eq!(
            judge(&presented(14.5, now), &limits(30, Some(14)), now).0,
            State::Critical
        );
        // Less than a day left is critical unless a critical limit says otherwise (it cannot
        // be lower than 0).
        let (s, text, _) = judge(&presented(0.5, now), &limits(30, None), now);
        assert_eq!(s, State::Critical);
        assert!(text.contains("expires in 12 hours"), "{text}");
        let (s, text, _) = judge(&presented(-2.5, now), &limits(30, Some(14)), now);
        assert_eq!(s, State::Critical);
        assert!(text.contains("expired on"), "{text}");
        assert_eq!(
            judge(&presented(-0.1, now), &limits(30, None), now).0,
            State::Critical
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(read(b"").is_err());
        assert!(read(&[0x30, 0x82, 0xff, 0xff, 0]).is_err());
    }
}
