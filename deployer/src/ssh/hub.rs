//! One SSH session to a jump host, shared by every tunnel through it: 200 hosts behind one
//! bastion are one login to the bastion, not 200 (OpenSSH's ControlMaster does the same). A
//! thread owns the session, since a libssh2 session is driven by one thread at a time; it opens
//! a direct-tcpip channel per tunnel and carries bytes between each channel and the socket pair
//! the next hop's session runs over, so host-key checks and authentication are the same at every
//! hop, and no `ssh` subprocess is involved.
//!
//! The session is non-blocking and every channel is served on every pass: libssh2 finishes a
//! packet it could only half send before it sends another, and only the call that started the
//! packet finishes it, so a channel is never dropped while it may own one (a channel ends by
//! `close`, retried until libssh2 says it is done).

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The handle to a jump host's session: tunnels are asked for through it. The session lives while
/// a handle or a tunnel does.
pub struct Hub {
    requests: mpsc::Sender<Request>,
    /// A byte written here wakes the session's thread from `poll`.
    waker: UnixStream,
    alive: Arc<AtomicBool>,
    /// Since when the channel being opened has waited for the jump host's answer.
    opening_since: Arc<Mutex<Option<Instant>>>,
}

struct Request {
    host: String,
    port: u16,
    reply: mpsc::SyncSender<Result<UnixStream, String>>,
}

impl Hub {
    /// Starts the thread that owns `session` (logged in; `watch` is a duplicate of its socket).
    /// `through` is the hub this session's own socket is a tunnel of, kept while this one runs.
    pub fn start(
        session: ssh2::Session,
        watch: OwnedFd,
        through: Option<Arc<Hub>>,
    ) -> std::io::Result<Arc<Self>> {
        let (requests, incoming) = mpsc::channel();
        let (waker, woken) = UnixStream::pair()?;
        woken.set_nonblocking(true)?;
        waker.set_nonblocking(true)?;
        let alive = Arc::new(AtomicBool::new(true));
        let opening_since = Arc::new(Mutex::new(None));
        session.set_blocking(false);
        let pump = Pump {
            session,
            watch,
            woken,
            incoming,
            hung_up: false,
            opening: None,
            tunnels: Vec::new(),
            buf: vec![0u8; 32 * 1024],
            alive: Arc::clone(&alive),
            opening_since: Arc::clone(&opening_since),
            _through: through,
        };
        std::thread::Builder::new()
            .name("ssh-jump".into())
            .spawn(move || pump.run())?;
        Ok(Arc::new(Self {
            requests,
            waker,
            alive,
            opening_since,
        }))
    }

    /// How long an open may wait before the next tunnel goes through another session.
    const STUCK: Duration = Duration::from_secs(1);

    /// True while a channel has waited over [`Hub::STUCK`] for the jump host to open it: libssh2
    /// opens one at a time, so a host that never answers the jump host's connect (a dropped SYN
    /// waits minutes) would hold every later tunnel behind it.
    pub fn is_stuck(&self) -> bool {
        toolkit_core::lock(&self.opening_since).is_some_and(|t| t.elapsed() > Self::STUCK)
    }

    /// False once the session has ended (its host hung up): a new one is needed.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// A tunnel to `host:port` through this session: the local end of a socket pair whose other
    /// end the session's thread carries to and from a direct-tcpip channel.
    pub fn open(&self, host: &str, port: u16, timeout: Duration) -> Result<UnixStream, String> {
        let (reply, answer) = mpsc::sync_channel(1);
        let request = Request {
            host: host.to_owned(),
            port,
            reply,
        };
        let ended = || "the jump host's session has ended".to_owned();
        self.requests.send(request).map_err(|_| ended())?;
        // A full socket means a wake-up is already pending.
        let _ = (&self.waker).write(&[1]);
        match answer.recv_timeout(timeout) {
            Ok(answered) => answered,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(format!("no answer within {} s", timeout.as_secs()))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(ended()),
        }
    }
}

/// The session's thread: the session, the tunnel being opened, the tunnels open.
struct Pump {
    session: ssh2::Session,
    watch: OwnedFd,
    woken: UnixStream,
    incoming: mpsc::Receiver<Request>,
    /// Every handle is gone: once the tunnels end, so does the session.
    hung_up: bool,
    opening: Option<Request>,
    tunnels: Vec<Tunnel>,
    buf: Vec<u8>,
    alive: Arc<AtomicBool>,
    opening_since: Arc<Mutex<Option<Instant>>>,
    _through: Option<Arc<Hub>>,
}

struct Tunnel {
    channel: ssh2::Channel,
    local: UnixStream,
    to_local: Vec<u8>,
    to_remote: Vec<u8>,
    /// Either side ended: the channel is being closed.
    closing: bool,
}

impl Pump {
    fn run(mut self) {
        loop {
            self.take_request();
            if self.hung_up && self.opening.is_none() && self.tunnels.is_empty() {
                break;
            }
            let opened = self.open_next();
            let moved = self.carry_all();
            if (opened || moved) || self.wait() {
                continue;
            }
            // The jump host hung up: every tunnel through it is gone.
            break;
        }
        self.alive.store(false, Ordering::Release);
    }

    fn take_request(&mut self) {
        let mut sink = [0u8; 64];
        while matches!((&self.woken).read(&mut sink), Ok(n) if n > 0) {}
        if self.opening.is_none() {
            match self.incoming.try_recv() {
                Ok(r) => {
                    self.opening = Some(r);
                    *toolkit_core::lock(&self.opening_since) = Some(Instant::now());
                }
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => self.hung_up = true,
            }
        }
    }

    /// Goes on opening the requested channel; true when that is settled either way.
    fn open_next(&mut self) -> bool {
        let Some(r) = &self.opening else {
            return false;
        };
        let answer = match self.session.channel_direct_tcpip(&r.host, r.port, None) {
            Err(e) if would_block(&e) => return false,
            Err(e) => Err(e.message().to_owned()),
            Ok(channel) => self.add_tunnel(channel),
        };
        *toolkit_core::lock(&self.opening_since) = None;
        if let Some(r) = self.opening.take() {
            // The asker may have stopped waiting: the tunnel then ends as its end is dropped.
            let _ = r.reply.send(answer);
        }
        true
    }

    fn add_tunnel(&mut self, channel: ssh2::Channel) -> Result<UnixStream, String> {
        let pair = UnixStream::pair().and_then(|(ours, theirs)| {
            theirs.set_nonblocking(true)?;
            Ok((ours, theirs))
        });
        let (ours, theirs) = pair.map_err(|e| format!("cannot make a socket pair: {e}"))?;
        self.tunnels.push(Tunnel {
            channel,
            local: theirs,
            to_local: Vec::new(),
            to_remote: Vec::new(),
            closing: false,
        });
        Ok(ours)
    }

    /// One pass over every tunnel; true when anything moved or a tunnel ended.
    fn carry_all(&mut self) -> bool {
        let buf = &mut self.buf;
        let mut moved = false;
        self.tunnels.retain_mut(|t| {
            if t.closing {
                return match t.channel.close() {
                    Err(e) if would_block(&e) => true,
                    _ => {
                        moved = true;
                        false
                    }
                };
            }
            let inbound = carry(&mut t.channel, &mut t.local, &mut t.to_local, buf);
            let outbound = carry(&mut t.local, &mut t.channel, &mut t.to_remote, buf);
            if matches!(inbound, Flow::Ended) || matches!(outbound, Flow::Ended) {
                t.closing = true;
            }
            moved |= t.closing || matches!(inbound, Flow::Moved) || matches!(outbound, Flow::Moved);
            true
        });
        moved
    }

    /// Sleeps until a socket can take a tunnel further (see [`interest`]). A short timeout covers
    /// packets libssh2 read into its own queue while sending. False when the jump host hung up.
    fn wait(&mut self) -> bool {
        let (remote, locals) = interest(&self.session, &self.tunnels, self.opening.is_some());
        let mut fds = Vec::with_capacity(2 + locals.len());
        fds.push(PollFd::new(self.watch.as_fd(), remote));
        fds.push(PollFd::new(self.woken.as_fd(), PollFlags::POLLIN));
        for (t, flags) in self.tunnels.iter().zip(&locals) {
            fds.push(PollFd::new(t.local.as_fd(), *flags));
        }
        if poll(&mut fds, PollTimeout::from(200u16)).is_err() {
            return false;
        }
        let gone = PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL;
        let hung_up: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| r.intersects(gone)))
            .collect();
        drop(fds);
        // A tunnel whose session went away: what it still had to send has no reader left.
        for (t, gone) in self.tunnels.iter_mut().zip(&hung_up[2..]) {
            t.closing |= *gone;
        }
        !hung_up[0]
    }
}

/// What to wait for: on the session's socket, input only when it can be used (a tunnel has room
/// to read into, a write waits for the window to open, a channel is being opened or closed), else
/// unread data would wake us forever; on each tunnel's socket, input when nothing waits to go
/// out, output when something waits to come in.
fn interest(
    session: &ssh2::Session,
    tunnels: &[Tunnel],
    opening: bool,
) -> (PollFlags, Vec<PollFlags>) {
    let mut remote = PollFlags::empty();
    let usable = |t: &Tunnel| t.closing || t.to_local.is_empty() || !t.to_remote.is_empty();
    if opening || tunnels.iter().any(usable) {
        remote |= PollFlags::POLLIN;
    }
    if matches!(
        session.block_directions(),
        ssh2::BlockDirections::Outbound | ssh2::BlockDirections::Both
    ) {
        remote |= PollFlags::POLLOUT;
    }
    let locals = tunnels
        .iter()
        .map(|t| {
            let mut f = PollFlags::empty();
            if !t.closing && t.to_remote.is_empty() {
                f |= PollFlags::POLLIN;
            }
            if !t.closing && !t.to_local.is_empty() {
                f |= PollFlags::POLLOUT;
            }
            f
        })
        .collect();
    (remote, locals)
}

/// libssh2's LIBSSH2_ERROR_EAGAIN: a non-blocking call that must be made again.
const EAGAIN: i32 = -37;

fn would_block(e: &ssh2::Error) -> bool {
    e.code() == ssh2::ErrorCode::Session(EAGAIN)
}

/// What one pass over a direction did.
enum Flow {
    Moved,
    Idle,
    /// The source ended (EOF, or a close without one) or either side failed.
    Ended,
}

/// Reads from `from` when `pending` is empty, then writes what is pending to `to`, without
/// blocking (both sides are non-blocking).
fn carry(from: &mut impl Read, to: &mut impl Write, pending: &mut Vec<u8>, buf: &mut [u8]) -> Flow {
    let blocked = |e: &std::io::Error| e.kind() == ErrorKind::WouldBlock;
    let mut moved = false;
    if pending.is_empty() {
        match from.read(buf) {
            Ok(0) => return Flow::Ended,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                moved = true;
            }
            Err(e) if blocked(&e) => {}
            Err(_) => return Flow::Ended,
        }
    }
    if !pending.is_empty() {
        match to.write(pending) {
            Ok(n) => {
                pending.drain(..n);
                moved |= n > 0;
            }
            Err(e) if blocked(&e) => {}
            Err(_) => return Flow::Ended,
        }
    }
    if moved { Flow::Moved } else { Flow::Idle }
}
