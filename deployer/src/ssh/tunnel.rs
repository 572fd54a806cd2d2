//! One tunnel of a jump host's session (see `hub`): a direct-tcpip channel and the socket pair
//! end the next hop's session runs over, the bytes in flight each way, and how it ends.
//!
//! libssh2 finishes a packet it could only half send before it sends any other, and only the
//! call that started the packet can finish it: a write of this channel, or a read (which may
//! send a window adjust). So a tunnel that ends keeps making both calls until its last write is
//! through, and only then closes its channel, retrying `close` until libssh2 is done: a packet
//! left half sent would stop every other tunnel of the session.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

pub(super) struct Tunnel {
    channel: ssh2::Channel,
    /// `None` once the tunnel ends: the next hop's session is gone or its channel ended.
    local: Option<UnixStream>,
    to_local: Vec<u8>,
    to_remote: Vec<u8>,
    /// Since when the tunnel has been ending.
    ending: Option<Instant>,
}

/// What a pass over a tunnel did.
pub(super) enum Pass {
    Moved,
    Idle,
    /// The channel is closed: the tunnel can go.
    Closed,
}

/// How long an ending tunnel tries to send what it still holds before closing regardless (the
/// jump host stopped taking it: its window stays shut). The close itself waits for the jump
/// host's answer, which it may hold while its own side drains; nothing else waits on it.
const FLUSH: Duration = Duration::from_secs(10);

impl Tunnel {
    pub(super) fn new(channel: ssh2::Channel, local: UnixStream) -> Self {
        Self {
            channel,
            local: Some(local),
            to_local: Vec::new(),
            to_remote: Vec::new(),
            ending: None,
        }
    }

    pub(super) fn local(&self) -> Option<&UnixStream> {
        self.local.as_ref()
    }

    /// The next hop's session hung up: whatever it still had coming has nobody to read it.
    pub(super) fn end(&mut self) {
        self.local = None;
        self.ending.get_or_insert_with(Instant::now);
    }

    pub(super) fn is_ending(&self) -> bool {
        self.ending.is_some()
    }

    /// Bytes wait to go into the channel while its window is open: the socket to the jump host
    /// is what they wait for.
    pub(super) fn wants_to_send(&self) -> bool {
        !self.to_remote.is_empty() && self.channel.write_window().remaining > 0
    }

    /// Input for the session's socket would be used: there is room to read into, a write
    /// waits for the window to open, or the tunnel ends (a close waits for the answer).
    pub(super) fn wants_input(&self) -> bool {
        self.is_ending() || self.to_local.is_empty() || !self.to_remote.is_empty()
    }

    /// What to wait for on the tunnel's socket: input when nothing waits to go out, output
    /// when something waits to come in.
    pub(super) fn local_interest(&self) -> nix::poll::PollFlags {
        use nix::poll::PollFlags;
        let mut f = PollFlags::empty();
        if self.to_remote.is_empty() {
            f |= PollFlags::POLLIN;
        }
        if !self.to_local.is_empty() {
            f |= PollFlags::POLLOUT;
        }
        f
    }

    /// libssh2 holds input for this channel that a read would deliver now (read from the
    /// socket while serving another channel): the next pass must not wait for the socket.
    pub(super) fn has_queued_input(&self) -> bool {
        !self.is_ending()
            && self.to_local.is_empty()
            && (self.channel.read_window().available > 0 || self.channel.eof())
    }

    /// One pass: carries each way without blocking, or goes on ending.
    pub(super) fn pass(&mut self, buf: &mut [u8]) -> Pass {
        if self.ending.is_some() {
            return self.go_on_ending(buf);
        }
        let Some(local) = self.local.as_mut() else {
            self.end();
            return Pass::Moved;
        };
        let inbound = carry(&mut self.channel, local, &mut self.to_local, buf);
        let outbound = carry(local, &mut self.channel, &mut self.to_remote, buf);
        match (inbound, outbound) {
            (Flow::Ended, _) | (_, Flow::Ended) => {
                self.end();
                Pass::Moved
            }
            (Flow::Moved, _) | (_, Flow::Moved) => Pass::Moved,
            (Flow::Idle, Flow::Idle) => Pass::Idle,
        }
    }

    fn go_on_ending(&mut self, buf: &mut [u8]) -> Pass {
        let flushed = self.flush();
        // What still arrives is dropped (a read also moves the window on).
        let _ = self.channel.read(buf);
        // A window adjust a read left half sent is finished by this call (a read no longer
        // reaches libssh2 once the channel saw its end of file); with none pending it sends
        // nothing.
        if matches!(self.channel.adjust_receive_window(0, false), Err(e) if would_block(&e)) {
            return Pass::Idle;
        }
        let late = self.ending.is_some_and(|t| t.elapsed() > FLUSH);
        if !flushed && !late {
            return Pass::Idle;
        }
        match self.channel.close() {
            Err(e) if would_block(&e) => Pass::Idle,
            _ => Pass::Closed,
        }
    }

    /// Sends what is left for the channel; true when nothing is (sent, or it cannot be).
    fn flush(&mut self) -> bool {
        if self.to_remote.is_empty() {
            return true;
        }
        match self.channel.write(&self.to_remote) {
            Ok(n) => {
                self.to_remote.drain(..n);
                self.to_remote.is_empty()
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(_) => {
                self.to_remote.clear();
                true
            }
        }
    }
}

/// libssh2's LIBSSH2_ERROR_EAGAIN: a non-blocking call that must be made again.
const EAGAIN: i32 = -37;

pub(super) fn would_block(e: &ssh2::Error) -> bool {
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
