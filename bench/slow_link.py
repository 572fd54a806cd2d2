"""A link with a round-trip delay and, optionally, a bandwidth, for the deployer benchmarks: a TCP
proxy in this process that holds every chunk half the delay each way, then for as long as the
link takes to carry it (one link a host, each way, shared by all its connections). tc netem would
do it in the kernel, but needs the sch_netem module, which this machine may not have; every tool
of a run (the deployer, rsync, Capistrano) connects through the same proxy, so the comparison
stays fair."""
import queue
import socket
import threading
import time


class _Link:
    """One direction of a host's link: `bps` bits a second (None: no limit)."""

    def __init__(self, bps):
        self.bps, self.free, self.lock = bps, 0.0, threading.Lock()

    def carried(self, n):
        """When `n` bytes handed to the link now have crossed it."""
        with self.lock:
            self.free = max(time.monotonic(), self.free) + n * 8 / self.bps
            return self.free


def _pump(src, dst, delay, link):
    q = queue.Queue()

    def reader():
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            q.put((time.monotonic() + delay, data))
            if not data:
                return

    def writer():
        while True:
            due, data = q.get()
            if link.bps and data:
                due = max(due, link.carried(len(data)))
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return

    threading.Thread(target=reader, daemon=True).start()
    threading.Thread(target=writer, daemon=True).start()


def slow_link(ip, port, rtt, bps=None):
    """Listens on `ip` (a free port, returned) and carries each connection to ip:port with `rtt`
    seconds of round-trip delay and, with `bps`, at most that many bits a second each way."""
    up, down = _Link(bps), _Link(bps)
    ls = socket.socket()
    ls.bind((ip, 0))
    ls.listen(128)

    def accept():
        while True:
            c, _ = ls.accept()
            u = socket.create_connection((ip, int(port)))
            for s in (c, u):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _pump(c, u, rtt / 2, up)
            _pump(u, c, rtt / 2, down)

    threading.Thread(target=accept, daemon=True).start()
    return ls.getsockname()[1]


def known_hosts_for(known_lines, ip, port, new_port):
    """known_hosts lines of [ip]:port, rewritten for [ip]:new_port (the same host's key)."""
    prefix = f"[{ip}]:{port} "
    return [l.replace(prefix, f"[{ip}]:{new_port} ", 1) for l in known_lines if l.startswith(prefix)]
