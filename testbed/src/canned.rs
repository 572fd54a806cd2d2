//! A deliberately misbehaving HTTP server on loopback: each connection's request is read, then the
//! test's closure decides what goes back on the wire, byte for byte (wrong ids, HTML error pages,
//! stalls, truncated bodies, huge bodies). Real sockets; for testing clients' error handling.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What to do with one request.
pub enum Reply {
    /// Write these bytes verbatim, then close.
    Raw(Vec<u8>),
    /// Wait, then do the inner reply.
    After(Duration, Box<Reply>),
    /// A complete response with this status line, content type and body.
    Http {
        status: &'static str,
        content_type: &'static str,
        body: Vec<u8>,
    },
    /// Announce `length` bytes, send only `body`, then close the connection.
    Truncated { length: usize, body: Vec<u8> },
    /// A 200 `application/json` response of `size` bytes streamed in chunks.
    Huge { size: usize },
}

impl Reply {
    pub fn json(body: impl Into<Vec<u8>>) -> Reply {
        Reply::Http {
            status: "200 OK",
            content_type: "application/json",
            body: body.into(),
        }
    }
}

pub struct Canned {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

/// The request as the server saw it.
pub struct Seen {
    pub head: String,
    pub body: Vec<u8>,
}

impl Seen {
    /// The request body as JSON (`Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl Canned {
    pub fn start(respond: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_inner(None, respond)
    }

    /// The same over HTTPS with this certificate and key (PEM files).
    pub fn start_tls(
        cert: &Path,
        key: &Path,
        respond: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Self {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|i| i.collect::<Result<_, _>>())
            .unwrap_or_else(|e| panic!("{}: {e}", cert.display()));
        let key =
            PrivateKeyDer::from_pem_file(key).unwrap_or_else(|e| panic!("{}: {e}", key.display()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .unwrap_or_else(|e| panic!("TLS server config: {e}"));
        Self::start_inner(Some(Arc::new(config)), respond)
    }

    fn start_inner(
        tls: Option<Arc<rustls::ServerConfig>>,
        respond: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let respond = Arc::new(respond);
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let respond = respond.clone();
                let tls = tls.clone();
                std::thread::spawn(move || {
                    // Errors here are the client hanging up, which several tests provoke.
                    let _ = match tls {
                        None => serve(conn, respond.as_ref()),
                        Some(cfg) => match rustls::ServerConnection::new(cfg) {
                            Ok(sc) => serve(rustls::StreamOwned::new(sc, conn), respond.as_ref()),
                            Err(_) => Ok(()),
                        },
                    };
                });
            }
        });
        Self { addr, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Canned {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

fn serve(conn: impl Read + Write, respond: &dyn Fn(&Seen) -> Reply) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn);
    let mut head = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
        head.push_str(&line);
        if line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let reply = respond(&Seen { head, body });
    write_reply(reader.get_mut(), reply)
}

fn write_reply(conn: &mut impl Write, reply: Reply) -> std::io::Result<()> {
    match reply {
        Reply::Raw(bytes) => conn.write_all(&bytes)?,
        Reply::After(d, inner) => {
            std::thread::sleep(d);
            return write_reply(conn, *inner);
        }
        Reply::Http {
            status,
            content_type,
            body,
        } => {
            write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            conn.write_all(&body)?;
        }
        Reply::Truncated { length, body } => {
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
            )?;
            conn.write_all(&body)?;
        }
        Reply::Huge { size } => {
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
            )?;
            let chunk = vec![b' '; 64 * 1024];
            let mut left = size;
            while left > 0 {
                let n = left.min(chunk.len());
                conn.write_all(&chunk[..n])?;
                left -= n;
            }
        }
    }
    // The connection closes when the stream is dropped ("Connection: close").
    conn.flush()
}
