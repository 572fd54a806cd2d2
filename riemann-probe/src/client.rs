//! A synchronous Riemann client: TCP (4-byte big-endian length, then a `Msg`; one acknowledgement
//! per request), TLS with a client certificate (Riemann's TLS listener requires one), and UDP (one
//! `Msg` per datagram, no acknowledgement, at most 16 KiB).

use crate::proto::{Event, Msg, Query};
use prost::Message;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Riemann's UDP listener drops larger datagrams.
pub const MAX_DATAGRAM: usize = 16 * 1024;
/// A response larger than this is not a Riemann answer.
const MAX_RESPONSE: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out talking to {0}")]
    Timeout(String),
    #[error("connection to {addr} failed: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Server(String),
    #[error("malformed response: {0}")]
    Decode(String),
    #[error("a {0}-byte message is over UDP's 16 KiB limit: send fewer events or use TCP")]
    DatagramTooLarge(usize),
    #[error("queries need TCP or TLS (UDP has no response)")]
    QueryOverUdp,
    #[error("TLS setup: {0}")]
    Tls(String),
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA certificate(s) (PEM) that signed the server's certificate.
    pub ca: PathBuf,
    /// Our client certificate chain (PEM).
    pub cert: PathBuf,
    /// Our private key (PEM).
    pub key: PathBuf,
    /// Name to verify in the server's certificate [default: the host part of the address].
    pub server_name: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Transport {
    Tcp,
    Udp,
    Tls(TlsFiles),
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `HOST:PORT`
    pub addr: String,
    pub transport: Transport,
    /// Connect timeout, and read/write timeout of each request.
    pub timeout: Duration,
}

impl ClientConfig {
    pub fn tcp(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            transport: Transport::Tcp,
            timeout: Duration::from_secs(5),
        }
    }
}

enum Conn {
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    Udp(UdpSocket),
}

pub struct Client {
    conn: Conn,
    addr: String,
}

fn io_err(addr: &str, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
            Error::Timeout(addr.to_owned())
        }
        _ => Error::Io {
            addr: addr.to_owned(),
            source: e,
        },
    }
}

fn resolve(addr: &str) -> Result<Vec<SocketAddr>, Error> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| Error::Resolve(format!("{addr}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(Error::Resolve(addr.to_owned()));
    }
    Ok(addrs)
}

fn connect_tcp(addr: &str, timeout: Duration) -> Result<TcpStream, Error> {
    let mut last = None;
    for a in resolve(addr)? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                let set = s
                    .set_read_timeout(Some(timeout))
                    .and_then(|()| s.set_write_timeout(Some(timeout)))
                    .and_then(|()| s.set_nodelay(true));
                set.map_err(|e| io_err(addr, e))?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Connect {
        addr: addr.to_owned(),
        source: last.unwrap_or_else(|| std::io::Error::other("no address")),
    })
}

/// Builds the rustls configuration: the given CA as the only root, our certificate as client auth.
pub fn tls_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, Error> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let tls = |what: &str, e: &dyn std::fmt::Display| Error::Tls(format!("{what}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&files.ca)
        .map_err(|e| tls(&files.ca.display().to_string(), &e))?
    {
        let cert = cert.map_err(|e| tls(&files.ca.display().to_string(), &e))?;
        roots.add(cert).map_err(|e| tls("CA certificate", &e))?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| tls(&files.cert.display().to_string(), &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls(&files.cert.display().to_string(), &e))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| tls(&files.key.display().to_string(), &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls("protocol versions", &e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| tls("client certificate", &e))?;
    Ok(Arc::new(config))
}

impl Client {
    pub fn connect(cfg: &ClientConfig) -> Result<Self, Error> {
        let conn = match &cfg.transport {
            Transport::Tcp => Conn::Tcp(connect_tcp(&cfg.addr, cfg.timeout)?),
            Transport::Udp => {
                let target = resolve(&cfg.addr)?[0];
                let local: SocketAddr = if target.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                }
                .parse()
                .map_err(|_| Error::Resolve(cfg.addr.clone()))?;
                let sock = UdpSocket::bind(local).map_err(|e| io_err(&cfg.addr, e))?;
                sock.connect(target).map_err(|e| io_err(&cfg.addr, e))?;
                Conn::Udp(sock)
            }
            Transport::Tls(files) => {
                let config = tls_config(files)?;
                let host = files.server_name.clone().unwrap_or_else(|| {
                    cfg.addr
                        .rsplit_once(':')
                        .map_or(cfg.addr.as_str(), |(h, _)| h)
                        .trim_matches(['[', ']'])
                        .to_owned()
                });
                let name = rustls_pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| Error::Tls(format!("server name {host:?}: {e}")))?;
                let tcp = connect_tcp(&cfg.addr, cfg.timeout)?;
                let conn = rustls::ClientConnection::new(config, name)
                    .map_err(|e| Error::Tls(e.to_string()))?;
                Conn::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
            }
        };
        Ok(Self {
            conn,
            addr: cfg.addr.clone(),
        })
    }

    fn stream(&mut self) -> Option<&mut dyn ReadWrite> {
        match &mut self.conn {
            Conn::Tcp(s) => Some(s),
            Conn::Tls(s) => Some(s.as_mut()),
            Conn::Udp(_) => None,
        }
    }

    /// Sends one request and reads its acknowledgement (TCP/TLS).
    fn exchange(&mut self, msg: &Msg) -> Result<Msg, Error> {
        let addr = self.addr.clone();
        let body = msg.encode_to_vec();
        let Some(stream) = self.stream() else {
            return Err(Error::QueryOverUdp);
        };
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        stream.write_all(&frame).map_err(|e| io_err(&addr, e))?;
        stream.flush().map_err(|e| io_err(&addr, e))?;
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).map_err(|e| io_err(&addr, e))?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_RESPONSE {
            return Err(Error::Decode(format!(
                "response length {len} is implausible"
            )));
        }
        let mut buf = vec![0u8; len];
        stream.read_exact(&mut buf).map_err(|e| io_err(&addr, e))?;
        let resp = Msg::decode(&buf[..]).map_err(|e| Error::Decode(e.to_string()))?;
        if resp.ok == Some(false) || resp.error.is_some() {
            return Err(Error::Server(
                resp.error
                    .unwrap_or_else(|| "ok=false without a reason".into()),
            ));
        }
        Ok(resp)
    }

    /// Sends events; over TCP/TLS, returns once the server acknowledged them.
    pub fn send(&mut self, events: &[Event]) -> Result<(), Error> {
        let msg = Msg {
            events: events.to_vec(),
            ..Default::default()
        };
        if let Conn::Udp(sock) = &self.conn {
            let bytes = msg.encode_to_vec();
            if bytes.len() > MAX_DATAGRAM {
                return Err(Error::DatagramTooLarge(bytes.len()));
            }
            sock.send(&bytes).map_err(|e| io_err(&self.addr, e))?;
            return Ok(());
        }
        self.exchange(&msg).map(|_| ())
    }

    /// Runs a query (Riemann's query language) and returns the matching events.
    pub fn query(&mut self, query: &str) -> Result<Vec<Event>, Error> {
        let msg = Msg {
            query: Some(Query {
                string: Some(query.to_owned()),
            }),
            ..Default::default()
        };
        self.exchange(&msg).map(|r| r.events)
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// An event as one JSON object (for `riemann-probe query`), with only the fields that are set.
pub fn event_json(e: &Event) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        o.insert(k.to_owned(), v);
    };
    if let Some(v) = &e.host {
        put("host", v.clone().into());
    }
    if let Some(v) = &e.service {
        put("service", v.clone().into());
    }
    if let Some(v) = &e.state {
        put("state", v.clone().into());
    }
    if let Some(v) = &e.description {
        put("description", v.clone().into());
    }
    if let Some(m) = e.metric_sint64 {
        put("metric", m.into());
    } else if let Some(m) = e.metric() {
        put("metric", m.into());
    }
    if let Some(t) = e.ttl {
        put("ttl", f64::from(t).into());
    }
    if let Some(t) = e.effective_time_micros() {
        put("time_micros", t.into());
    }
    if !e.tags.is_empty() {
        put("tags", e.tags.clone().into());
    }
    if !e.attributes.is_empty() {
        let attrs: serde_json::Map<String, serde_json::Value> = e
            .attributes
            .iter()
            .map(|a| {
                (
                    a.key.clone(),
                    a.value.clone().map_or(serde_json::Value::Null, Into::into),
                )
            })
            .collect();
        put("attributes", attrs.into());
    }
    serde_json::Value::Object(o)
}
