//! One SSH session to a jump host, shared by every tunnel through it: 200 hosts behind one
//! bastion are one login to the bastion, not 200 (OpenSSH's ControlMaster does the same). A
//! thread owns the session, since a libssh2 session is driven by one thread at a time; it opens
//! a direct-tcpip channel per tunnel and carries bytes between each channel and the socket pair
//! the next hop's session runs over (`tunnel`), so host-key checks and authentication are the
//! same at every hop, and no `ssh` subprocess is involved. The session is non-blocking and every
//! tunnel is served on every pass.

use super::tunnel::{Pass, Tunnel, would_block};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::io::{Read, Write};
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
    /// How long an open may wait before the next tunnels go through another session.
    stuck_after: Duration,
}

/// Why no tunnel came.
#[derive(Debug)]
pub enum OpenError {
    /// This session cannot take it: it waits on a connection the jump host has not answered
    /// (see [`Hub::is_stuck`]), or it has ended. Ask again: another session takes it.
    TryAnother,
    Failed(String),
}

struct Request {
    host: String,
    port: u16,
    reply: mpsc::SyncSender<Result<UnixStream, OpenError>>,
}

impl Hub {
    /// Starts the thread that owns `session` (logged in; `watch` is a duplicate of its socket).
    /// `through` is the hub this session's own socket is a tunnel of, kept while this one runs.
    /// `timeout` is what each asker waits: an open stuck for a quarter of it (1 to 10 s) hands
    /// the tunnels asked for after it to another session.
    pub fn start(
        session: ssh2::Session,
        watch: OwnedFd,
        through: Option<Arc<Hub>>,
        timeout: Duration,
    ) -> std::io::Result<Arc<Self>> {
        let stuck_after = (timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(10));
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
            woken: Some(woken),
            incoming,
            hung_up: false,
            dead: false,
            opening: None,
            tunnels: Vec::new(),
            buf: vec![0u8; 32 * 1024],
            opening_since: Arc::clone(&opening_since),
            stuck_after,
            alive: Arc::clone(&alive),
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
            stuck_after,
        }))
    }

    /// False once the session has ended: a new one is needed.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// True while a channel has waited too long for the jump host to open it: libssh2 opens one
    /// at a time, so a host that never answers the jump host's connect (a dropped SYN waits
    /// minutes) would hold every later tunnel behind it.
    pub fn is_stuck(&self) -> bool {
        stuck(&self.opening_since, self.stuck_after)
    }

    /// A tunnel to `host:port` through this session: the local end of a socket pair whose other
    /// end the session's thread carries to and from a direct-tcpip channel.
    pub fn open(&self, host: &str, port: u16, timeout: Duration) -> Result<UnixStream, OpenError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let request = Request {
            host: host.to_owned(),
            port,
            reply,
        };
        self.requests
            .send(request)
            .map_err(|_| OpenError::TryAnother)?;
        // A full socket means a wake-up is already pending.
        let _ = (&self.waker).write(&[1]);
        match answer.recv_timeout(timeout) {
            Ok(answered) => answered,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(OpenError::Failed(format!(
                "no answer within {} s",
                timeout.as_secs()
            ))),
            // The session ended with the request still queued.
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(OpenError::TryAnother),
        }
    }
}

/// The session's thread: the session, the tunnel being opened, the tunnels open.
struct Pump {
    session: ssh2::Session,
    watch: OwnedFd,
    /// `None` once every handle is gone (the socket reads end of file).
    woken: Option<UnixStream>,
    incoming: mpsc::Receiver<Request>,
    /// Every handle is gone: once the tunnels end, so does the session.
    hung_up: bool,
    /// The session failed (an open failed other than by the jump host's refusal).
    dead: bool,
    opening: Option<Request>,
    tunnels: Vec<Tunnel>,
    buf: Vec<u8>,
    opening_since: Arc<Mutex<Option<Instant>>>,
    stuck_after: Duration,
    alive: Arc<AtomicBool>,
    _through: Option<Arc<Hub>>,
}

fn stuck(opening_since: &Mutex<Option<Instant>>, after: Duration) -> bool {
    toolkit_core::lock(opening_since).is_some_and(|t| t.elapsed() > after)
}

/// libssh2's errors that mean the session's connection is gone. Any other failure of an open
/// (the jump host could not connect, or did not answer within libssh2's 60 s) is that one
/// channel's.
const SESSION_GONE: [i32; 5] = [
    libssh2_sys::LIBSSH2_ERROR_SOCKET_SEND,
    libssh2_sys::LIBSSH2_ERROR_DECRYPT,
    libssh2_sys::LIBSSH2_ERROR_SOCKET_DISCONNECT,
    libssh2_sys::LIBSSH2_ERROR_PROTO,
    libssh2_sys::LIBSSH2_ERROR_SOCKET_RECV,
];

impl Pump {
    fn run(mut self) {
        self.serve();
        // Before the handles' requests are dropped unanswered: they try another session.
        self.alive.store(false, Ordering::Release);
    }

    fn serve(&mut self) {
        let mut looked_again = false;
        loop {
            self.take_requests();
            if self.dead || (self.hung_up && self.tunnels.is_empty()) {
                return;
            }
            let opened = self.open_next();
            let moved = self.carry_all();
            if opened || moved {
                looked_again = false;
                continue;
            }
            // Once: input that a read does not take (it is not for us) must not spin us.
            if self.queued() && !looked_again {
                looked_again = true;
                continue;
            }
            if !self.wait() {
                // The jump host hung up: every tunnel through it is gone.
                return;
            }
        }
    }

    fn take_requests(&mut self) {
        if let Some(woken) = &self.woken {
            let mut sink = [0u8; 64];
            loop {
                match (&*woken).read(&mut sink) {
                    Ok(0) => {
                        self.woken = None;
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
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
        if stuck(&self.opening_since, self.stuck_after) {
            // Whoever queued behind the open that is not answered asks another session.
            while let Ok(r) = self.incoming.try_recv() {
                let _ = r.reply.send(Err(OpenError::TryAnother));
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
            Err(e) => {
                let code = match e.code() {
                    ssh2::ErrorCode::Session(c) => c,
                    ssh2::ErrorCode::SFTP(_) => 0,
                };
                self.dead = SESSION_GONE.contains(&code);
                if self.dead {
                    self.alive.store(false, Ordering::Release);
                    Err(OpenError::TryAnother)
                } else {
                    Err(OpenError::Failed(e.message().to_owned()))
                }
            }
            Ok(channel) => self.add_tunnel(channel),
        };
        *toolkit_core::lock(&self.opening_since) = None;
        if let Some(r) = self.opening.take() {
            // The asker may have stopped waiting: the tunnel then ends as its end is dropped.
            let _ = r.reply.send(answer);
        }
        true
    }

    fn add_tunnel(&mut self, channel: ssh2::Channel) -> Result<UnixStream, OpenError> {
        let pair = UnixStream::pair().and_then(|(ours, theirs)| {
            theirs.set_nonblocking(true)?;
            Ok((ours, theirs))
        });
        let (ours, theirs) =
            pair.map_err(|e| OpenError::Failed(format!("cannot make a socket pair: {e}")))?;
        self.tunnels.push(Tunnel::new(channel, theirs));
        Ok(ours)
    }

    /// One pass over every tunnel; true when anything moved or a tunnel closed.
    fn carry_all(&mut self) -> bool {
        let buf = &mut self.buf;
        let mut moved = false;
        self.tunnels.retain_mut(|t| match t.pass(buf) {
            Pass::Moved => {
                moved = true;
                true
            }
            Pass::Idle => true,
            Pass::Closed => {
                moved = true;
                false
            }
        });
        moved
    }

    /// libssh2 read input for some tunnel into its own queue while serving another: a pass
    /// delivers it, the socket will not wake us for it.
    fn queued(&self) -> bool {
        self.tunnels.iter().any(Tunnel::has_queued_input)
    }

    /// Sleeps until a socket can take a tunnel further: on the session's socket, input only
    /// when it can be used, else unread data would wake us forever; on each tunnel's socket,
    /// input when nothing waits to go out, output when something waits to come in. A short
    /// timeout covers what escapes that. False when the jump host hung up.
    fn wait(&mut self) -> bool {
        let mut remote = PollFlags::empty();
        if self.opening.is_some() || self.tunnels.iter().any(Tunnel::wants_input) {
            remote |= PollFlags::POLLIN;
        }
        let blocked_out = matches!(
            self.session.block_directions(),
            ssh2::BlockDirections::Outbound | ssh2::BlockDirections::Both
        );
        if blocked_out || self.tunnels.iter().any(Tunnel::wants_to_send) {
            remote |= PollFlags::POLLOUT;
        }
        let mut fds = vec![PollFd::new(self.watch.as_fd(), remote)];
        if let Some(w) = &self.woken {
            fds.push(PollFd::new(w.as_fd(), PollFlags::POLLIN));
        }
        let first_tunnel = fds.len();
        let mut polled = Vec::new();
        for (i, t) in self.tunnels.iter().enumerate() {
            if let Some(local) = t.local() {
                fds.push(PollFd::new(local.as_fd(), t.local_interest()));
                polled.push(i);
            }
        }
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(_) => {}
            Err(Errno::EINTR) => return true,
            Err(_) => return false,
        }
        let gone = PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL;
        let hung_up: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| r.intersects(gone)))
            .collect();
        drop(fds);
        for (i, gone) in polled.iter().zip(&hung_up[first_tunnel..]) {
            if *gone {
                self.tunnels[*i].end();
            }
        }
        !hung_up[0]
    }
}
