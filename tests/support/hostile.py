"""Hostile loopback backends: the peers a health checker exists for.

`Hostile(addrs, mode)` listens on one or more loopback ip:port and, on every
connection, after reading the request, misbehaves according to `mode` (which
may be changed while it runs):

  'ok'          answer `HTTP/1.0 200 OK` (a peer that turns hostile later)
  'hang'        accept, read the request, never answer; hold the connection
  'trickle'     send `HTTP/1.1 200 ` then one byte every `every` seconds,
                never a newline
  'endless'     send `HTTP/1.1 200 ` then bytes without a newline, as fast as
                the client reads them
  'junk'        send 64 KiB of random bytes, then hold the connection
  'status2000'  answer `HTTP/1.1 2000 OK` (four digits: not a status code)
  'reset'       reset the connection (RST) as soon as it is set up: with
                `tls`, right after the TLS handshake
  'trickle_body'  answer `HTTP/1.1 200 OK` with a Content-Length and then
                `body` in pieces of `piece` bytes, one every `every` seconds
                (TCP_NODELAY: each piece its own segment)

With `tls` (an ssl.SSLContext) every connection does the TLS handshake first.
One thread accepts on all listeners, one thread serves each connection;
`stop()` closes the listeners and every open connection (the peer is then
dead: connections are refused).  Used by tests/healthcheck and by
bench/healthcheck; loopback only, stops by itself with the process (daemon
threads)."""
import os
import selectors
import socket
import ssl
import struct
import threading
import time

MODES = ('ok', 'hang', 'trickle', 'endless', 'junk', 'status2000', 'reset', 'trickle_body')
STATUS_START = b'HTTP/1.1 200 '


class Hostile:
    def __init__(self, addrs, mode='ok', tls=None, every=0.3, body=b'', piece=64):
        if isinstance(addrs, str):
            addrs = [addrs]
        assert mode in MODES, mode
        self.addrs = list(addrs)
        self.mode, self.tls, self.every = mode, tls, every
        self.body, self.piece = body, piece
        self.answered = 0            # 'trickle_body' answers sent whole
        self.lock = threading.Lock()
        self.accepted = 0            # connections accepted, all listeners
        self.open = 0                # connections being served now
        self.sent = 0                # bytes sent, all connections
        self.accept_times = []       # time.monotonic() of each accept
        self.stopped = threading.Event()
        self.listeners, self.conns, self.threads = [], set(), []

    @property
    def addr(self):
        return self.addrs[0]

    def start(self):
        self.stopped.clear()
        sel = selectors.DefaultSelector()
        for a in self.addrs:
            ip, port = a.rsplit(':', 1)
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, int(port)))
            s.listen(128)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            self.listeners.append(s)
        t = threading.Thread(target=self._accept_loop, args=(sel,), daemon=True)
        t.start()
        self.threads.append(t)
        return self

    def stop(self):
        """Close the listeners and every connection: the peers are dead."""
        self.stopped.set()
        for t in self.threads:
            t.join(2)
        self.threads = []
        for s in self.listeners:
            s.close()
        self.listeners = []
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            _close(c)

    def _accept_loop(self, sel):
        while not self.stopped.is_set():
            for key, _ in sel.select(0.1):
                try:
                    c, _ = key.fileobj.accept()
                except OSError:
                    continue
                with self.lock:
                    self.accepted += 1
                    self.accept_times.append(time.monotonic())
                threading.Thread(target=self._serve, args=(c,), daemon=True).start()
        sel.close()

    def _serve(self, c):
        with self.lock:
            self.open += 1
            self.conns.add(c)
        try:
            c.setblocking(True)
            c.settimeout(5)
            if self.tls:
                c = self._handshake(c)
            if c is not None:
                self._misbehave(c)
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            _close(c)
            with self.lock:
                self.open -= 1
                self.conns.discard(c)

    def _handshake(self, c):
        raw = c
        c = self.tls.wrap_socket(raw, server_side=True)
        with self.lock:
            self.conns.discard(raw)
            self.conns.add(c)
        return c

    def _misbehave(self, c):
        mode = self.mode
        if mode == 'reset':
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
            return
        _read_request(c)
        if mode == 'ok':
            self._send(c, b'HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok')
        elif mode == 'status2000':
            self._send(c, b'HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok')
        elif mode == 'trickle':
            self._send(c, STATUS_START)
            while not self.stopped.wait(self.every):
                self._send(c, b'x')
        elif mode == 'endless':
            self._send(c, STATUS_START)
            chunk = b'x' * 65536
            while not self.stopped.is_set():
                self._send(c, chunk)
        elif mode == 'trickle_body':
            self._trickle_body(c)
        elif mode == 'junk':
            self._send(c, os.urandom(65536))
            self._hold(c)
        else:                                   # hang
            self._hold(c)

    def _trickle_body(self, c):
        body, piece = self.body, self.piece
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send(c, b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n' % len(body))
        for i in range(0, len(body), piece):
            if self.stopped.is_set():
                return
            self._send(c, body[i:i + piece])
            if self.every:
                time.sleep(self.every)
        with self.lock:
            self.answered += 1
        self._hold(c)

    def _hold(self, c):
        """Keep the connection open, unanswered, until the client closes it."""
        c.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                if not c.recv(4096):
                    return
            except socket.timeout:
                continue

    def _send(self, c, data):
        c.sendall(data)
        with self.lock:
            self.sent += len(data)


def _read_request(c):
    """Read until the end of the request head (or 2 s, or EOF)."""
    data, deadline = b'', time.monotonic() + 2
    c.settimeout(0.2)
    while b'\r\n\r\n' not in data and time.monotonic() < deadline:
        try:
            chunk = c.recv(4096)
        except socket.timeout:
            continue
        if not chunk:
            break
        data += chunk
    c.settimeout(5)
    return data


def _close(c):
    try:
        c.close()
    except OSError:
        pass
