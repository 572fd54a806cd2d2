//! A Riemann protocol sink that stands in for the Riemann server (a Clojure jar that cannot be
//! installed here): TCP, UDP and TLS listeners, acknowledgements, an index keyed by (host,
//! service) whose events expire by time + ttl like Riemann's reaper (emitting `expired` events),
//! a small query language, and fault modes. Tests check it against riemann-c-client so it stays
//! honest about the wire format.

use prost::Message;
use riemann_probe::{Event, Msg};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use toolkit_core::lock;

/// How the sink misbehaves, for testing clients.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    None,
    /// Answer every message with ok=false and this error.
    NotOk(String),
    /// Read requests, never answer.
    Stall,
    /// Answer with half a frame, then close.
    CloseMidFrame,
    /// Answer one byte every half second, forever (a frame it says is 200 bytes long): each
    /// read a client makes succeeds, the answer never ends.
    Drip,
    /// Answer a query with `ok` and this many bytes of empty events (2 bytes each on the wire,
    /// a few hundred each once decoded): an amplification attack on a client's memory.
    Flood(usize),
}

/// Server-side TLS files (PEM) and the CA that must have signed client certificates.
#[derive(Debug, Clone)]
pub struct TlsServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// How often expired events are reaped (Riemann's default is 10 s).
    pub reap_interval: Duration,
    pub tls: Option<TlsServerFiles>,
}

impl Default for SinkOptions {
    fn default() -> Self {
        Self {
            reap_interval: Duration::from_millis(200),
            tls: None,
        }
    }
}

struct Indexed {
    event: Event,
    /// Micros since the epoch: the event's time, or when it arrived.
    time_micros: i64,
}

#[derive(Default)]
struct State {
    index: Mutex<HashMap<(String, String), Indexed>>,
    received: Mutex<Vec<Event>>,
    /// How many events each message carried, in order.
    messages: Mutex<Vec<usize>>,
    expired: Mutex<Vec<Event>>,
    fault: Mutex<Option<Fault>>,
    down: AtomicBool,
    stop: AtomicBool,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

pub struct Sink {
    state: Arc<State>,
    tcp: SocketAddr,
    udp: SocketAddr,
    tls: Option<SocketAddr>,
}

impl Sink {
    pub fn start() -> Self {
        Self::start_with(SinkOptions::default())
    }

    pub fn start_with(opts: SinkOptions) -> Self {
        let state = Arc::new(State::default());
        let tcp_listener =
            TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("sink bind: {e}"));
        let tcp = tcp_listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        spawn_tcp(tcp_listener, state.clone(), None);
        let udp_sock =
            UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("sink udp bind: {e}"));
        let udp = udp_sock.local_addr().unwrap_or_else(|e| panic!("{e}"));
        spawn_udp(udp_sock, state.clone());
        let tls = opts.tls.as_ref().map(|files| {
            let config = server_tls(files);
            let l =
                TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("sink tls bind: {e}"));
            let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
            spawn_tcp(l, state.clone(), Some(config));
            addr
        });
        let reaper = state.clone();
        let every = opts.reap_interval;
        std::thread::spawn(move || {
            while !reaper.stop.load(Ordering::Relaxed) {
                std::thread::sleep(every);
                reap(&reaper);
            }
        });
        Self {
            state,
            tcp,
            udp,
            tls,
        }
    }

    /// Also takes TCP events on `addr` (a fixed address a config names, such as port 5555 on
    /// a network namespace's outside address).
    pub fn listen_also(&self, addr: SocketAddr) {
        let listener = TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("sink bind {addr}: {e} (is something else on it?)"));
        spawn_tcp(listener, self.state.clone(), None);
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp
    }

    pub fn udp_addr(&self) -> SocketAddr {
        self.udp
    }

    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls
    }

    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.state.fault) = Some(fault);
    }

    /// Refuse connections (close each at once) until `up`.
    pub fn down(&self) {
        self.state.down.store(true, Ordering::Relaxed);
    }

    pub fn up(&self) {
        self.state.down.store(false, Ordering::Relaxed);
    }

    /// Every event received, in order.
    pub fn received(&self) -> Vec<Event> {
        lock(&self.state.received).clone()
    }

    /// How many events each message accepted so far carried, in order.
    pub fn message_sizes(&self) -> Vec<usize> {
        lock(&self.state.messages).clone()
    }

    pub fn received_count(&self) -> usize {
        lock(&self.state.received).len()
    }

    /// `expired` events the reaper emitted, in order.
    pub fn expired(&self) -> Vec<Event> {
        lock(&self.state.expired).clone()
    }

    /// The current index (unexpired events), as a query would return them.
    pub fn query(&self, q: &str) -> Vec<Event> {
        run_query(&self.state, q)
    }

    /// Waits until `pred` holds for some received event.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + timeout;
        loop {
            // Clone first: the predicate may call back into the sink.
            let received = lock(&self.state.received).clone();
            if let Some(e) = received.into_iter().find(|e| pred(e)) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no matching event within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.tcp);
        if let Some(t) = self.tls {
            let _ = TcpStream::connect(t);
        }
    }
}

fn reap(state: &State) {
    let now = now_micros();
    let mut index = lock(&state.index);
    let gone: Vec<(String, String)> = index
        .iter()
        .filter(|(_, v)| {
            let ttl = f64::from(v.event.ttl.unwrap_or(60.0));
            now as f64 > v.time_micros as f64 + ttl * 1e6
        })
        .map(|(k, _)| k.clone())
        .collect();
    for key in gone {
        if let Some(v) = index.remove(&key) {
            lock(&state.expired).push(Event {
                host: v.event.host,
                service: v.event.service,
                state: Some("expired".into()),
                time_micros: Some(now),
                ..Default::default()
            });
        }
    }
}

fn ingest(state: &State, events: Vec<Event>) {
    let mut index = lock(&state.index);
    for e in events {
        let key = (
            e.host.clone().unwrap_or_default(),
            e.service.clone().unwrap_or_default(),
        );
        let time_micros = e.effective_time_micros().unwrap_or_else(now_micros);
        index.insert(
            key,
            Indexed {
                event: e.clone(),
                time_micros,
            },
        );
        lock(&state.received).push(e);
    }
}

/// `true`, or `field = "value"` / `tagged "t"` terms joined by `and`.
fn matches(e: &Event, q: &str) -> bool {
    let q = q.trim();
    if q == "true" {
        return true;
    }
    q.split(" and ").all(|term| {
        let term = term.trim().trim_matches(['(', ')']);
        if let Some(tag) = term.strip_prefix("tagged") {
            return e.tags.iter().any(|t| t == tag.trim().trim_matches('"'));
        }
        let Some((field, value)) = term.split_once('=') else {
            return false;
        };
        let value = value.trim().trim_matches('"');
        let got = match field.trim() {
            "host" => e.host.as_deref(),
            "service" => e.service.as_deref(),
            "state" => e.state.as_deref(),
            "description" => e.description.as_deref(),
            _ => None,
        };
        got == Some(value)
    })
}

fn run_query(state: &State, q: &str) -> Vec<Event> {
    let mut out: Vec<Event> = lock(&state.index)
        .values()
        .map(|v| v.event.clone())
        .filter(|e| matches(e, q))
        .collect();
    out.sort_by(|a, b| (&a.host, &a.service).cmp(&(&b.host, &b.service)));
    out
}

fn spawn_udp(sock: UdpSocket, state: Arc<State>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = sock.recv(&mut buf) {
            if state.stop.load(Ordering::Relaxed) {
                return;
            }
            // Riemann's UDP listener drops datagrams over 16 KiB.
            if n > 16 * 1024 {
                continue;
            }
            if let Ok(msg) = Msg::decode(&buf[..n]) {
                ingest(&state, msg.events);
            }
        }
    });
}

fn spawn_tcp(listener: TcpListener, state: Arc<State>, tls: Option<Arc<rustls::ServerConfig>>) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if state.stop.load(Ordering::Relaxed) {
                return;
            }
            let Ok(conn) = conn else { continue };
            if state.down.load(Ordering::Relaxed) {
                drop(conn);
                continue;
            }
            let state = state.clone();
            let tls = tls.clone();
            std::thread::spawn(move || {
                let _ = conn.set_nodelay(true);
                match tls {
                    None => serve(conn, &state),
                    Some(cfg) => {
                        if let Ok(sc) = rustls::ServerConnection::new(cfg) {
                            serve(rustls::StreamOwned::new(sc, conn), &state);
                        }
                    }
                }
            });
        }
    });
}

fn serve(mut conn: impl Read + Write, state: &State) {
    loop {
        let mut len = [0u8; 4];
        if conn.read_exact(&mut len).is_err() {
            return;
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > 64 * 1024 * 1024 {
            return;
        }
        let mut buf = vec![0u8; len];
        if conn.read_exact(&mut buf).is_err() {
            return;
        }
        if state.down.load(Ordering::Relaxed) {
            return;
        }
        let fault = lock(&state.fault).clone().unwrap_or(Fault::None);
        let reply = answer(&buf, &fault, state);
        match misbehave(&mut conn, &fault) {
            Next::Answer => {}
            Next::Skip => continue,
            Next::Close => return,
        }
        let body = reply.encode_to_vec();
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        if conn.write_all(&frame).and_then(|()| conn.flush()).is_err() {
            return;
        }
    }
}

/// The answer a request gets: its events indexed or its query run, or the fault's refusal.
fn answer(buf: &[u8], fault: &Fault, state: &State) -> Msg {
    match Msg::decode(buf) {
        Err(e) => Msg {
            ok: Some(false),
            error: Some(format!("decode: {e}")),
            ..Default::default()
        },
        Ok(_) if matches!(fault, Fault::NotOk(_)) => Msg {
            ok: Some(false),
            error: match fault {
                Fault::NotOk(why) => Some(why.clone()),
                _ => None,
            },
            ..Default::default()
        },
        Ok(msg) => {
            if let Some(q) = msg.query.and_then(|q| q.string) {
                Msg {
                    ok: Some(true),
                    events: run_query(state, &q),
                    ..Default::default()
                }
            } else {
                lock(&state.messages).push(msg.events.len());
                ingest(state, msg.events);
                Msg {
                    ok: Some(true),
                    ..Default::default()
                }
            }
        }
    }
}

/// What the connection does after a fault acted on it.
enum Next {
    Answer,
    Skip,
    Close,
}

/// Acts out `fault` on the connection, before (or instead of) the answer.
fn misbehave(conn: &mut impl Write, fault: &Fault) -> Next {
    match fault {
        Fault::Stall => Next::Skip,
        Fault::CloseMidFrame => {
            let _ = conn.write_all(&[0, 0]);
            let _ = conn.flush();
            Next::Close
        }
        Fault::Flood(bytes) => {
            // ok = true, then (field 6, length 0) pairs: written as it goes, never built.
            let bytes = bytes & !1;
            let mut head = ((bytes + 2) as u32).to_be_bytes().to_vec();
            head.extend_from_slice(&[0x10, 0x01]);
            let chunk = [0x32u8, 0x00].repeat(32 * 1024);
            let mut left = bytes;
            let mut sent = conn.write_all(&head);
            while sent.is_ok() && left > 0 {
                let n = left.min(chunk.len());
                sent = conn.write_all(&chunk[..n]);
                left -= n;
            }
            Next::Skip
        }
        Fault::Drip => {
            for b in [0u8, 0, 0, 200].into_iter().chain(std::iter::repeat(0)) {
                std::thread::sleep(Duration::from_millis(500));
                if conn.write_all(&[b]).is_err() {
                    return Next::Close;
                }
            }
            Next::Close
        }
        _ => Next::Answer,
    }
}

fn server_tls(files: &TlsServerFiles) -> Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in
        CertificateDer::pem_file_iter(&files.client_ca).unwrap_or_else(|e| panic!("client CA: {e}"))
    {
        roots
            .add(c.unwrap_or_else(|e| panic!("client CA: {e}")))
            .unwrap_or_else(|e| panic!("client CA: {e}"));
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap_or_else(|e| panic!("client verifier: {e}"));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .unwrap_or_else(|e| panic!("server cert: {e}"))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("server cert: {e}"));
    let key =
        PrivateKeyDer::from_pem_file(&files.key).unwrap_or_else(|e| panic!("server key: {e}"));
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("{e}"))
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap_or_else(|e| panic!("server cert/key: {e}"));
    Arc::new(cfg)
}

/// A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate, made
/// with the openssl CLI in `dir`. Returns (ca, server cert, server key, client cert, client key).
pub fn make_certs(dir: &Path) -> [PathBuf; 5] {
    make_certs_valid_for(dir, 2)
}

/// As [`make_certs`], every certificate valid for `days` from now (to test expiry warnings).
pub fn make_certs_valid_for(dir: &Path, days: u32) -> [PathBuf; 5] {
    let run = |args: Vec<String>| {
        let out = std::process::Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .output();
        crate::process::checked(&format!("openssl {args:?} (apt-get install openssl)"), out);
    };
    let words = |s: String| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
    // Extensions make the certificates X.509 v3, which webpki requires.
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let mut ca = words(format!(
        "req -x509 {key} -keyout ca.key -out ca.pem -days {days} -subj"
    ));
    ca.push("/CN=test CA".into());
    run(ca);
    for who in ["server", "client"] {
        run(words(format!(
            "req {key} -keyout {who}.key -out {who}.csr -subj /CN={who}"
        )));
        run(words(format!(
            "x509 -req -in {who}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {who}.pem -days {days} -extfile {who}.ext"
        )));
    }
    [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ]
    .map(|f| dir.join(f))
}
