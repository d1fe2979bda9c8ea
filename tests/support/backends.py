"""Real backends on loopback (127.0.0.0/8 or ::1) with switchable answers.

    b = Backend('127.0.1.11', 8080, name='foo1').start()
    b.total('/readyz')           # requests seen on a path; b.health, b.clients
    b.status, b.mode = 500, 'status'
    b.mode = 'ok'
    b.stop()                     # listener closed: connections are refused
    b.start()                    # and back

`mode` says how the requests in `scope` are answered: every request
(scope='all'), or only health checks (scope='health': paths under
health_path; every other request then gets 200 and the backend's name):
  'ok'       200
  'status'   `status` (e.g. 500)
  'slow'     wait `delay` seconds, then 200
  'garbage'  a line that is not a status line, then close
  'close'    close the connection without answering
(ANSWERS maps each mode to its method: hostile modes go there.)  A health
check's body is "ok" (or `health_body`), any other request's the backend's
name; the X-Backend header always names it, and `headers` (a dict) adds
chosen ones to every answer.  HTTP/1.1 requests keep the connection
unless they say Connection: close.

TLS: tls=SSLContext serves TLS only (it may be swapped while running); with
dual=True the same port also answers plain HTTP (the first byte tells a TLS
ClientHello from a request line), so a config that health-checks over https
and proxies over http can reach it.  Blackhole is a listener that never
completes a TCP handshake.  TcpService is a plain TCP service (echo, a
banner on connect, silence) for `type = "tcp"` checks.
"""
import collections
import random
import socket
import ssl
import threading
import time

import pytest

HEALTH_PATH = '/health'


def subnet():
    """A random 127.a.b (a /24) so parallel tests do not share backend addresses."""
    return '127.%d.%d' % (random.randint(100, 250), random.randint(1, 250))


def host_port(host, port):
    return '[%s]:%d' % (host, port) if ':' in host else '%s:%d' % (host, port)


class Backend:
    def __init__(self, host, port=8080, name=None, tls=None, dual=False, scope='all',
                 health_path=HEALTH_PATH):
        assert scope in ('all', 'health'), scope
        self.host, self.port = host, port
        self.name = name or host_port(host, port)
        self.tls, self.dual = tls, dual
        self.scope, self.health_path = scope, health_path
        self.mode, self.status, self.delay = 'ok', 200, 5.0
        self.headers, self.health_body = {}, b'ok'
        self.lock = threading.Lock()
        self.reset_counts()
        self.sock = None
        self.stopped = threading.Event()
        self.threads = []
        self.connections = 0                       # connections accepted
        self.open = set()                          # connections being served

    @property
    def addr(self):
        return host_port(self.host, self.port)

    # -- lifecycle -------------------------------------------------------
    def start(self):
        fam = socket.AF_INET6 if ':' in self.host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(128)
        s.settimeout(0.2)
        self.sock = s
        self.stopped.clear()
        t = threading.Thread(target=self._accept_loop, args=(s,), daemon=True)
        t.start()
        self.threads.append(t)
        return self

    def stop(self):
        """The backend dies: the listener closes (new connections are
        refused) and so does every open connection, as when a process is
        killed (nginx 1.29.7+ keeps idle connections to backends by default;
        a slow answer in progress stops waiting)."""
        self.stopped.set()
        if self.sock:
            self.sock.close()
            self.sock = None
        with self.lock:
            live = list(self.open)
        for conn in live:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(2)
        self.threads = []

    # -- counts ----------------------------------------------------------
    def reset_counts(self):
        with self.lock:
            self.hits = collections.Counter()      # requests per path
            self.health = 0                        # health checks
            self.clients = 0                       # every other request
            self.health_times = []
            self.health_hosts = collections.Counter()   # Host headers of health checks

    def total(self, path=None):
        with self.lock:
            return self.hits[path] if path else sum(self.hits.values())

    def _count(self, path, health, host=None):
        with self.lock:
            self.hits[path] += 1
            if health:
                self.health += 1
                self.health_hosts[host] += 1
                self.health_times.append(time.monotonic())
            else:
                self.clients += 1

    # -- serving ---------------------------------------------------------
    def _accept_loop(self, s):
        while not self.stopped.is_set():
            try:
                conn, _ = s.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        raw = conn                                 # conn may become its TLS wrapper
        with self.lock:
            self.open.add(raw)
        try:
            conn.settimeout(10)
            tls = self.tls
            if tls is not None:
                first = conn.recv(1, socket.MSG_PEEK)
                if not (self.dual and first and first != b'\x16'):
                    conn = tls.wrap_socket(conn, server_side=True)
            f = conn.makefile('rb')
            while not self.stopped.is_set() and self._answer_one(conn, f):
                pass
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            with self.lock:
                self.open.discard(raw)
            try:
                conn.close()
            except OSError:
                pass

    def _answer_one(self, conn, f):
        """Read one request and answer it; True to keep the connection."""
        request = read_request(f)
        if request is None:
            return False
        method_path_version, headers = request
        path = method_path_version[1] if len(method_path_version) > 1 else '/'
        version = method_path_version[2] if len(method_path_version) > 2 else 'HTTP/1.0'
        health = path.startswith(self.health_path)
        self._count(path, health, headers.get('host'))
        mode = self.mode if health or self.scope == 'all' else 'ok'
        keep = version == 'HTTP/1.1' and headers.get('connection', '').lower() != 'close'
        return ANSWERS[mode](self, conn, version, self.health_body if health else self.name.encode(),
                             keep)

    def _reply(self, conn, version, status, body, keep):
        if version not in ('HTTP/1.0', 'HTTP/1.1'):
            version = 'HTTP/1.1'
        extra = ''.join('%s: %s\r\n' % kv for kv in self.headers.items())
        conn.sendall(('%s %d X\r\nX-Backend: %s\r\n%sContent-Length: %d\r\nConnection: %s\r\n\r\n'
                      % (version, status, self.name, extra, len(body), 'keep-alive' if keep else 'close')
                      ).encode() + body)
        return keep

    def _answer_ok(self, conn, version, body, keep):
        return self._reply(conn, version, 200, body, keep)

    def _answer_status(self, conn, version, body, keep):
        return self._reply(conn, version, self.status, body, keep)

    def _answer_slow(self, conn, version, body, keep):
        self.stopped.wait(self.delay)
        return self._reply(conn, version, 200, body, keep)

    def _answer_garbage(self, conn, version, body, keep):
        conn.sendall(b'SSH-2.0-OpenSSH_9.2\r\n\r\n')
        return False

    def _answer_close(self, conn, version, body, keep):
        return False


ANSWERS = {
    'ok': Backend._answer_ok,
    'status': Backend._answer_status,
    'slow': Backend._answer_slow,
    'garbage': Backend._answer_garbage,
    'close': Backend._answer_close,
}


def read_request(f):
    """([method, path, version], {header: value}) from a binary file, body
    skipped; None at the end of the connection."""
    line = f.readline()
    if not line:
        return None
    parts = line.decode('latin-1').split()
    headers = {}
    while True:
        h = f.readline()
        if h in (b'\r\n', b'\n', b''):
            break
        k, _, v = h.decode('latin-1').partition(':')
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get('content-length', 0) or 0)
    if n:
        f.read(n)
    return parts, headers


class TcpService(Backend):
    """A plain TCP service on loopback (Backend's listener, its own answers):

        t = TcpService('127.0.1.11', 5432).start()
        t.mode = 'echo'        # send back what arrives (the default)
        t.mode = 'banner'      # send `banner` on connect, then echo
        t.mode = 'silent'      # read, never answer
        t.mode = 'close'       # close at once
        t.connections          # connections accepted
        t.stop(); t.start()    # refused while stopped
    """

    def __init__(self, host, port, banner=b'220 ready\r\n'):
        super().__init__(host, port)
        self.banner, self.mode, self.received = banner, 'echo', b''

    def _serve(self, conn):
        mode = self.mode
        try:
            conn.settimeout(5)
            if mode == 'close':
                return
            if mode == 'banner':
                conn.sendall(self.banner)
            while not self.stopped.is_set():
                data = conn.recv(4096)
                if not data:
                    return
                self.received += data
                if mode in ('echo', 'banner'):
                    conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()


class Blackhole:
    """A listener whose accept queue is full and that never accepts: new
    connections never complete the TCP handshake (SYNs are dropped), so a
    connect() to it times out."""

    def __init__(self, host, port=8080):
        self.host, self.port = host, port
        self.clients = []

    @property
    def addr(self):
        return host_port(self.host, self.port)

    def start(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(0)
        self.sock = s
        # fill the accept queue (backlog 0 holds one connection, allow for more)
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect((self.host, self.port))
            except BlockingIOError:
                pass
            self.clients.append(c)
        time.sleep(0.1)
        probe = socket.socket()
        probe.settimeout(0.3)
        try:
            probe.connect((self.host, self.port))
            raise AssertionError('blackhole listener still completes handshakes')
        except socket.timeout:
            pass
        finally:
            probe.close()
        return self

    def stop(self):
        for c in self.clients:
            c.close()
        self.sock.close()


def _on_free_subnet(cls, n, port, net=None, **kw):
    """n started cls(host, port, **kw) on a fresh 127.x.y.0/24 subnet (.11,
    .12, ...): `port` when free there (three tries), else a random one."""
    for attempt in range(6):
        net = net or subnet()
        p = port if attempt < 3 else random.randint(20000, 30000)
        out = []
        try:
            for i in range(n):
                out.append(cls('%s.%d' % (net, 11 + i), p, **kw).start())
        except OSError:
            for b in out:
                b.stop()
            net = None
            continue
        return out
    raise AssertionError('no free backend subnet/port')


@pytest.fixture
def backends():
    """backends(n, port=8080, tls=None, net=None, scope='health') -> n started
    Backends on a fresh 127.x.y.0/24 subnet (addresses .11, .12, ...); all
    stopped at teardown.  Their modes fail health checks only, by default.
    The seed's port 8080 when free on the subnet, else a random port
    (something on this host may listen on 0.0.0.0:8080)."""
    made = []

    def make(n, port=8080, tls=None, net=None, scope='health'):
        out = _on_free_subnet(Backend, n, port, net=net, tls=tls, scope=scope)
        made.extend(out)
        return out
    yield make
    for b in made:
        b.stop()


@pytest.fixture
def tcp_services():
    """tcp_services(n, mode='echo') -> n started TcpServices on a fresh
    subnet and a random port; all stopped at teardown."""
    made = []

    def make(n, mode='echo'):
        out = _on_free_subnet(TcpService, n, random.randint(20000, 30000))
        for t in out:
            t.mode = mode
        made.extend(out)
        return out
    yield make
    for t in made:
        t.stop()


@pytest.fixture
def blackhole():
    made = []

    def make(host, port=8080):
        b = Blackhole(host, port).start()
        made.append(b)
        return b
    yield make
    for b in made:
        b.stop()
