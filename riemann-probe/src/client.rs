//! A synchronous Riemann client: TCP (4-byte big-endian length, then a `Msg`; one acknowledgement
//! per request), TLS with a client certificate (Riemann's TLS listener requires one), and UDP (one
//! `Msg` per datagram, no acknowledgement, at most 16 KiB).

use crate::proto::{Event, Msg, Query};
use prost::Message;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Riemann's UDP listener drops larger datagrams.
pub(crate) const MAX_DATAGRAM: usize = 16 * 1024;

/// The most one answer may hold: its bytes, and its events. An event decodes to ~230 bytes of
/// memory however few bytes it took on the wire (an empty one takes 2), so both are bounded:
/// what an answer costs in memory is at most `events × 230 + bytes`, whatever the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerLimits {
    /// Bytes of one answer.
    pub bytes: usize,
    /// Events in one answer.
    pub events: usize,
}

impl AnswerLimits {
    /// A query's answer [default]: 16 MiB, 100,000 events (~23 MB decoded): Riemann's whole index
    /// of a busy site, not a flood.
    pub const QUERY: Self = Self {
        bytes: 16 << 20,
        events: 100_000,
    };
    /// The acknowledgement of sent events: `{ok: true}` or an error, never events.
    const ACK: Self = Self {
        bytes: 1 << 20,
        events: 0,
    };
}

/// What went wrong talking to Riemann.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address did not resolve (to any socket address).
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// No resolved address accepted a TCP connection.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address as configured (`HOST:PORT`).
        addr: String,
        /// The last connection error.
        #[source]
        source: std::io::Error,
    },
    /// The timeout (or the client's overall deadline) ran out; names the address.
    #[error("timed out talking to {0}")]
    Timeout(String),
    /// Reading or writing the connection failed.
    #[error("connection to {addr} failed: {source}")]
    Io {
        /// The address as configured (`HOST:PORT`).
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The server refused the request (`ok: false`); its error message (escaped and clipped
    /// when shown: it is the server's text).
    #[error("server error: {}", toolkit_core::terminal::value(.0))]
    Server(String),
    /// The response was not a valid `Msg`.
    #[error("malformed response: {0}")]
    Decode(String),
    /// The response was larger than the caller's [`AnswerLimits`] allow: nothing of it is kept.
    #[error("the answer from {addr} is over the limit of {limit} (narrow the query)")]
    TooLarge {
        /// The address as configured (`HOST:PORT`).
        addr: String,
        /// Which limit: `16777216 bytes` or `100000 events`.
        limit: String,
    },
    /// A query was attempted over UDP, which gets no response.
    #[error("queries need TCP or TLS (UDP has no response)")]
    QueryOverUdp,
    /// The TLS files could not be loaded or the server name is invalid.
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// The files for a TLS connection with a client certificate.
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

/// How to reach the server.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Length-prefixed messages over TCP, each acknowledged.
    Tcp,
    /// One message per datagram, unacknowledged, at most 16 KiB each.
    Udp,
    /// TCP inside TLS, with a client certificate (Riemann's TLS listener requires one).
    Tls(TlsFiles),
}

/// Where and how a [`Client`] connects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `HOST:PORT`
    pub addr: String,
    /// TCP, UDP or TLS.
    pub transport: Transport,
    /// The most one operation may take in all: connecting, or one request with its answer
    /// (however slowly the server dribbles it).
    pub timeout: Duration,
}

impl ClientConfig {
    /// Plain TCP to `addr` (`HOST:PORT`), with a 5 s timeout.
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

/// A connection to one Riemann server; every call blocks until done or timed out.
pub struct Client {
    conn: Conn,
    addr: String,
    timeout: Duration,
    /// Everything this client does ends by then (a one-shot command's total), when set.
    until: Option<Instant>,
}

/// Time left before `deadline`, or a timeout error naming `addr`.
fn left(addr: &str, deadline: Instant) -> Result<Duration, Error> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(Error::Timeout(addr.to_owned()))
    } else {
        Ok(left)
    }
}

/// One read or write on the stream, its socket's timeout set to what is left before
/// `deadline`: the deadline bounds the whole exchange, not each call.
fn step<T>(
    conn: &mut Conn,
    addr: &str,
    deadline: Instant,
    f: impl FnOnce(&mut dyn ReadWrite) -> std::io::Result<T>,
) -> Result<T, Error> {
    let left = left(addr, deadline)?;
    let set = |s: &TcpStream| {
        s.set_read_timeout(Some(left))
            .and_then(|()| s.set_write_timeout(Some(left)))
    };
    let done = match conn {
        Conn::Tcp(s) => set(s).and_then(|()| f(s)),
        Conn::Tls(t) => set(&t.sock).and_then(|()| f(t.as_mut())),
        Conn::Udp(_) => return Err(Error::QueryOverUdp),
    };
    done.map_err(|e| io_err(addr, e))
}

fn write_all_by(conn: &mut Conn, addr: &str, deadline: Instant, buf: &[u8]) -> Result<(), Error> {
    let mut at = 0;
    while at < buf.len() {
        match step(conn, addr, deadline, |s| s.write(&buf[at..]))? {
            0 => return Err(io_err(addr, std::io::ErrorKind::WriteZero.into())),
            n => at += n,
        }
    }
    step(conn, addr, deadline, |s| s.flush())
}

fn read_exact_by(
    conn: &mut Conn,
    addr: &str,
    deadline: Instant,
    buf: &mut [u8],
) -> Result<(), Error> {
    let mut at = 0;
    while at < buf.len() {
        match step(conn, addr, deadline, |s| s.read(&mut buf[at..]))? {
            0 => return Err(io_err(addr, std::io::ErrorKind::UnexpectedEof.into())),
            n => at += n,
        }
    }
    Ok(())
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

fn connect_tcp(addr: &str, deadline: Instant) -> Result<TcpStream, Error> {
    let mut last = None;
    for a in resolve(addr)? {
        match TcpStream::connect_timeout(&a, left(addr, deadline)?) {
            Ok(s) => {
                s.set_nodelay(true).map_err(|e| io_err(addr, e))?;
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
pub(crate) fn tls_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, Error> {
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
    /// Connects within `cfg.timeout`.
    pub fn connect(cfg: &ClientConfig) -> Result<Self, Error> {
        Self::connect_until(cfg, None)
    }

    /// Connects, and ends everything this client does by `until` too: a one-shot command
    /// (`riemann-probe send --timeout 5s`) takes at most that in all.
    pub fn connect_until(cfg: &ClientConfig, until: Option<Instant>) -> Result<Self, Error> {
        let deadline = Instant::now() + cfg.timeout;
        let deadline = until.map_or(deadline, |u| u.min(deadline));
        let conn = match &cfg.transport {
            Transport::Tcp => Conn::Tcp(connect_tcp(&cfg.addr, deadline)?),
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
                let tcp = connect_tcp(&cfg.addr, deadline)?;
                let conn = rustls::ClientConnection::new(config, name)
                    .map_err(|e| Error::Tls(e.to_string()))?;
                Conn::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
            }
        };
        Ok(Self {
            conn,
            addr: cfg.addr.clone(),
            timeout: cfg.timeout,
            until,
        })
    }

    /// Sends one request (`frame`: its length, then the encoded `Msg`) and reads its answer
    /// (TCP/TLS), all within the timeout; an answer over `limits` is refused before it is
    /// decoded (its length first, then its events counted on the wire).
    fn exchange(&mut self, frame: &[u8], limits: AnswerLimits) -> Result<Msg, Error> {
        let deadline = self.deadline();
        write_all_by(&mut self.conn, &self.addr, deadline, frame)?;
        self.answer(deadline, limits)
    }

    /// When an operation starting now must be over: the timeout, or the command's end.
    fn deadline(&self) -> Instant {
        let deadline = Instant::now() + self.timeout;
        self.until.map_or(deadline, |u| u.min(deadline))
    }

    /// Reads the answer to the oldest request not answered yet, by `deadline`.
    fn answer(&mut self, deadline: Instant, limits: AnswerLimits) -> Result<Msg, Error> {
        let addr = self.addr.clone();
        let mut len = [0u8; 4];
        read_exact_by(&mut self.conn, &addr, deadline, &mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        let too_large = |limit: String| Error::TooLarge {
            addr: addr.clone(),
            limit,
        };
        if len > limits.bytes {
            return Err(too_large(format!("{} bytes", limits.bytes)));
        }
        let mut buf = vec![0u8; len];
        read_exact_by(&mut self.conn, &addr, deadline, &mut buf)?;
        if count_events(&buf)? > limits.events {
            return Err(too_large(format!("{} events", limits.events)));
        }
        let resp = Msg::decode(&buf[..]).map_err(|e| Error::Decode(e.to_string()))?;
        if resp.ok == Some(false) || resp.error.is_some() {
            return Err(Error::Server(
                resp.error
                    .unwrap_or_else(|| "ok=false without a reason".into()),
            ));
        }
        Ok(resp)
    }

    /// Sends events; over TCP/TLS, returns once the server acknowledged them. Over UDP the
    /// events are split across datagrams of at most 16 KiB; one that alone is larger cannot be
    /// sent and is dropped. Returns how many were dropped so (always 0 over TCP/TLS).
    pub fn send(&mut self, events: &[Event]) -> Result<usize, Error> {
        if let Conn::Udp(sock) = &self.conn {
            let (datagrams, dropped) = datagrams(events);
            for bytes in datagrams {
                sock.send(&bytes).map_err(|e| io_err(&self.addr, e))?;
            }
            return Ok(dropped);
        }
        self.exchange(&events_frame(events.iter(), true), AnswerLimits::ACK)
            .map(|_| 0)
    }

    /// Whether the server answers each message (TCP, TLS), so that several can be in flight
    /// with [`Client::write_events`] and [`Client::acknowledgement`]; not over UDP.
    pub fn acknowledges(&self) -> bool {
        !matches!(self.conn, Conn::Udp(_))
    }

    /// Writes one message of `events` without waiting for its answer (TCP/TLS). Riemann
    /// answers a connection's messages in order: read each with [`Client::acknowledgement`].
    pub fn write_events<'a>(
        &mut self,
        events: impl Iterator<Item = &'a Event> + Clone,
    ) -> Result<(), Error> {
        let deadline = self.deadline();
        write_all_by(
            &mut self.conn,
            &self.addr,
            deadline,
            &events_frame(events, true),
        )
    }

    /// Reads the answer to the oldest message [`Client::write_events`] wrote and that has no
    /// answer yet: `Err(Error::Server(..))` when the server refused it, the connection still
    /// usable; any other error leaves the connection unusable.
    pub fn acknowledgement(&mut self) -> Result<(), Error> {
        let deadline = self.deadline();
        self.answer(deadline, AnswerLimits::ACK).map(|_| ())
    }

    /// Runs a query (Riemann's query language) and returns the matching events, within
    /// [`AnswerLimits::QUERY`].
    pub fn query(&mut self, query: &str) -> Result<Vec<Event>, Error> {
        self.query_within(query, AnswerLimits::QUERY)
    }

    /// Runs a query; an answer over `limits` fails with [`Error::TooLarge`], nothing decoded.
    pub fn query_within(&mut self, query: &str, limits: AnswerLimits) -> Result<Vec<Event>, Error> {
        let body = Msg {
            query: Some(Query {
                string: Some(query.to_owned()),
            }),
            ..Default::default()
        }
        .encode_to_vec();
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        self.exchange(&frame, limits).map(|r| r.events)
    }
}

/// `events` encoded as a `Msg` carrying them, byte for byte what `Msg { events, .. }` encodes
/// to, without cloning them into one first (a busy probe's sender spent a third of its time
/// allocating and freeing those clones); after its length (big endian u32) when `framed`.
fn events_frame<'a>(events: impl Iterator<Item = &'a Event> + Clone, framed: bool) -> Vec<u8> {
    use prost::encoding::message;
    let len: usize = events
        .clone()
        .map(|e| message::encoded_len(EVENTS, e))
        .sum();
    let mut out = Vec::with_capacity(len + 4);
    if framed {
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
    for e in events {
        message::encode(EVENTS, e, &mut out);
    }
    out
}

/// `Msg.events`' field number.
const EVENTS: u32 = 6;

/// How many events an encoded `Msg` holds, counted on the wire without decoding any.
fn count_events(mut buf: &[u8]) -> Result<usize, Error> {
    use prost::encoding::{DecodeContext, WireType, decode_key, skip_field};
    let bad = |e: prost::DecodeError| Error::Decode(e.to_string());
    let mut n = 0;
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).map_err(bad)?;
        if tag == EVENTS && wire == WireType::LengthDelimited {
            n += 1;
        }
        skip_field(wire, tag, &mut buf, DecodeContext::default()).map_err(bad)?;
    }
    Ok(n)
}

/// `events` as encoded `Msg`s of at most `MAX_DATAGRAM` bytes each, in order, and how many
/// events were left out because each alone is larger.
fn datagrams(events: &[Event]) -> (Vec<Vec<u8>>, usize) {
    // What one event adds to a Msg: its field key, its length, itself.
    let cost = |e: &Event| {
        let len = e.encoded_len();
        1 + prost::encoding::encoded_len_varint(len as u64) + len
    };
    let encode = |events: &[Event]| events_frame(events.iter(), false);
    let mut out = Vec::new();
    let mut dropped = 0;
    let mut start = 0;
    let mut size = 0;
    for (i, e) in events.iter().enumerate() {
        let c = cost(e);
        if c > MAX_DATAGRAM {
            if start < i {
                out.push(encode(&events[start..i]));
            }
            start = i + 1;
            size = 0;
            dropped += 1;
            continue;
        }
        if size + c > MAX_DATAGRAM {
            out.push(encode(&events[start..i]));
            start = i;
            size = 0;
        }
        size += c;
    }
    if start < events.len() {
        out.push(encode(&events[start..]));
    }
    (out, dropped)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server that answers the one request it reads with `ok` and `events` empty events.
    fn answering(events: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut len = [0u8; 4];
            conn.read_exact(&mut len).expect("length");
            let mut request = vec![0u8; u32::from_be_bytes(len) as usize];
            conn.read_exact(&mut request).expect("request");
            let mut body = vec![0x10, 0x01];
            body.extend([0x32, 0x00].repeat(events));
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend(body);
            let _ = conn.write_all(&frame);
        });
        addr
    }

    #[test]
    fn events_are_encoded_as_the_msg_that_carries_them() {
        let events: Vec<Event> = (0..3)
            .map(|i| {
                let mut e = crate::event(format!("svc {i}")).host("h").ttl(30.0).build();
                e.metric_sint64 = Some(i);
                e
            })
            .collect();
        let msg = Msg {
            events: events.clone(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(events_frame(events.iter(), false), msg);
        let framed = events_frame(events.iter(), true);
        assert_eq!(
            (&framed[..4], &framed[4..]),
            (&(msg.len() as u32).to_be_bytes()[..], &msg[..])
        );
        assert_eq!(Msg::decode(&framed[4..]).expect("decodes").events, events);
        assert_eq!(events_frame([].iter(), true), [0, 0, 0, 0]);
    }

    fn query(events: usize, limits: AnswerLimits) -> Result<usize, Error> {
        let mut c = Client::connect(&ClientConfig::tcp(answering(events)))?;
        c.query_within("true", limits).map(|e| e.len())
    }

    #[test]
    fn an_answer_is_read_up_to_each_limit_and_refused_past_it() {
        // 3 events are 2 + 3 × 2 = 8 bytes.
        let at = AnswerLimits {
            bytes: 8,
            events: 3,
        };
        assert_eq!(query(3, at).expect("at both limits"), 3);
        let over_events = query(4, AnswerLimits { bytes: 100, ..at });
        assert!(
            matches!(&over_events, Err(Error::TooLarge { limit, .. }) if limit == "3 events"),
            "{over_events:?}"
        );
        let over_bytes = query(3, AnswerLimits { bytes: 7, ..at });
        assert!(
            matches!(&over_bytes, Err(Error::TooLarge { limit, .. }) if limit == "7 bytes"),
            "{over_bytes:?}"
        );
        assert_eq!(
            count_events(&[0x10, 0x01, 0x32, 0x00, 0x32, 0x00]).ok(),
            Some(2)
        );
    }
}
