"""Helpers for the health-checker tests: loopback HTTP(S) backends with
switchable failure modes, a listener that never completes a handshake, test
certificates, and nginx.conf snippets."""
import os
import random
import re
import socket
import ssl
import subprocess
import threading
import time

import pytest

from conftest import conf_wrap, http_get, wait_for

HEALTH_PATH = '/health'


def subnet():
    """A random 127.a.b.0/24 so parallel tests do not share backend addresses."""
    return '127.%d.%d' % (random.randint(100, 250), random.randint(1, 250))


class Backend:
    """A threaded HTTP/1.0 backend on ip:port.

    mode (health checks only; client requests always get 200 unless
    client_status is set):
      'ok'       200
      'status'   `status` (e.g. 500)
      'slow'     wait `delay` seconds before answering
      'garbage'  a line that is not a status line
      'close'    close the connection without answering
    Counts health checks and client requests separately."""

    def __init__(self, ip, port=8080, tls=None, name=None):
        self.ip, self.port, self.tls = ip, port, tls
        self.name = name or ('[%s]:%d' % (ip, port) if ':' in ip else '%s:%d' % (ip, port))
        self.mode = 'ok'
        self.status = 200
        self.delay = 5.0
        self.health = 0
        self.clients = 0
        self.health_times = []
        self.lock = threading.Lock()
        self.sock = None
        self.stopped = threading.Event()
        self.threads = []

    @property
    def addr(self):
        if ':' in self.ip:
            return '[%s]:%d' % (self.ip, self.port)
        return '%s:%d' % (self.ip, self.port)

    def start(self):
        fam = socket.AF_INET6 if ':' in self.ip else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.ip, self.port))
        s.listen(128)
        s.settimeout(0.2)
        self.sock = s
        self.stopped.clear()
        t = threading.Thread(target=self._accept_loop, args=(s,), daemon=True)
        t.start()
        self.threads.append(t)
        return self

    def stop(self):
        """Close the listener: new connections are refused."""
        self.stopped.set()
        if self.sock:
            self.sock.close()
            self.sock = None
        for t in self.threads:
            t.join(2)
        self.threads = []

    def reset_counts(self):
        with self.lock:
            self.health = 0
            self.clients = 0
            self.health_times = []

    def _accept_loop(self, s):
        while not self.stopped.is_set():
            try:
                c, _ = s.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            c.settimeout(10)
            if self.tls:
                try:
                    c = self.tls.wrap_socket(c, server_side=True)
                except (ssl.SSLError, OSError):
                    c.close()
                    return
            data = b''
            while b'\r\n\r\n' not in data:
                chunk = c.recv(4096)
                if not chunk:
                    c.close()
                    return
                data += chunk
            line = data.split(b'\r\n', 1)[0].decode('latin1')
            parts = line.split()
            path = parts[1] if len(parts) > 1 else '/'
            if path.startswith(HEALTH_PATH):
                with self.lock:
                    self.health += 1
                    self.health_times.append(time.monotonic())
                mode = self.mode
                if mode == 'slow':
                    self.stopped.wait(self.delay)
                    self._reply(c, 200)
                elif mode == 'garbage':
                    c.sendall(b'SSH-2.0-OpenSSH_9.2\r\n\r\n')
                elif mode == 'close':
                    pass
                elif mode == 'status':
                    self._reply(c, self.status)
                else:
                    self._reply(c, 200)
            else:
                with self.lock:
                    self.clients += 1
                self._reply(c, 200, self.name.encode())
        except OSError:
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    @staticmethod
    def _reply(c, status, body=b'ok'):
        c.sendall(b'HTTP/1.0 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s'
                  % (status, len(body), body))


class Blackhole:
    """A listener whose accept queue is full and that never accepts: new
    connections never complete the TCP handshake (SYNs are dropped), so a
    connect() to it times out."""

    def __init__(self, ip, port=8080):
        self.ip, self.port = ip, port
        self.clients = []

    @property
    def addr(self):
        return '%s:%d' % (self.ip, self.port)

    def start(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.ip, self.port))
        s.listen(0)
        self.sock = s
        # fill the accept queue (backlog 0 holds one connection, allow for more)
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect((self.ip, self.port))
            except BlockingIOError:
                pass
            self.clients.append(c)
        time.sleep(0.1)
        probe = socket.socket()
        probe.settimeout(0.3)
        try:
            probe.connect((self.ip, self.port))
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


def make_certs(d, names=('good.test',)):
    """A root CA and a leaf (signed by it, depth 1) with SAN DNS:names; plus a
    second, untrusted CA with its own leaf for the same names."""
    d = str(d)
    os.makedirs(d, exist_ok=True)

    def run(*args):
        subprocess.run(args, check=True, capture_output=True, cwd=d, timeout=60)

    san = ','.join('DNS:' + n for n in names)
    for ca in ('ca', 'evilca'):
        run('openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
            '-keyout', ca + '.key', '-out', ca + '.crt', '-subj', '/CN=Test %s' % ca,
            '-addext', 'basicConstraints=critical,CA:TRUE',
            '-addext', 'keyUsage=critical,keyCertSign,cRLSign')
        leaf = 'leaf' if ca == 'ca' else 'evilleaf'
        run('openssl', 'req', '-newkey', 'rsa:2048', '-nodes', '-keyout', leaf + '.key',
            '-out', leaf + '.csr', '-subj', '/CN=%s' % names[0])
        with open(os.path.join(d, leaf + '.ext'), 'w') as f:
            f.write('subjectAltName=%s\nbasicConstraints=CA:FALSE\n'
                    'extendedKeyUsage=serverAuth\n' % san)
        run('openssl', 'x509', '-req', '-in', leaf + '.csr', '-CA', ca + '.crt',
            '-CAkey', ca + '.key', '-CAcreateserial', '-days', '2', '-out', leaf + '.crt',
            '-extfile', leaf + '.ext')
    return d


def server_tls(certdir, leaf='leaf'):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(certdir, leaf + '.crt'),
                        os.path.join(certdir, leaf + '.key'))
    return ctx


def upstream_block(name, primary, backup=(), extra=''):
    lines = ['    upstream %s {' % name]
    for a in primary:
        lines.append('        server %s;' % a)
    for a in backup:
        lines.append('        server %s backup;' % a)
    if extra:
        lines.append('        ' + extra)
    lines.append('    }')
    return '\n'.join(lines)


def checker_lua(upstream, shm='healthcheck', **opts):
    """spawn_checker call; opts are Lua expressions (strings) or Python values."""
    def lua(v):
        if isinstance(v, bool):
            return 'true' if v else 'false'
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return '{' + ', '.join(lua(x) for x in v) + '}'
        if isinstance(v, LuaExpr):
            return str(v)
        return '"%s"' % str(v).replace('\\', '\\\\').replace('"', '\\"')
    opts.setdefault('type', 'http')
    opts.setdefault('http_req', LuaExpr(r'"GET %s HTTP/1.0\r\nHost: hc\r\n\r\n"' % HEALTH_PATH))
    opts['shm'] = shm
    opts['upstream'] = upstream
    body = ',\n'.join('            %s = %s' % (k, lua(v)) for k, v in opts.items())
    return '''
        do
            local hc = require "resty.upstream.healthcheck"
            local ok, err = hc.spawn_checker({
%s
            })
            if not ok then
                ngx.log(ngx.ERR, "failed to spawn health checker: ", err)
            end
        end''' % body


class LuaExpr(str):
    pass


STATUS_SERVER = r'''
    server {
        listen 127.0.0.1:%(port)d reuseport;
        location = /status {
            default_type text/plain;
            content_by_lua_block {
                local hc = require "resty.upstream.healthcheck"
                ngx.print(hc.status_page())
            }
        }
        location = /metrics {
            default_type text/plain;
            content_by_lua_block {
                local hc = require "resty.upstream.healthcheck"
                local args = ngx.req.get_uri_args()
                local s, err = hc.prometheus_status_page(
                    args.extended and {extended = true} or nil)
                if not s then
                    ngx.status = 500
                    ngx.say(err)
                    return
                end
                ngx.print(s)
            }
        }
        location = /local {
            # this worker's view of its peers: "pid name up|down" lines
            default_type text/plain;
            content_by_lua_block {
                local up = require "ngx.upstream"
                local u = ngx.var.arg_u
                ngx.say("pid ", ngx.worker.pid())
                for _, get in ipairs({up.get_primary_peers, up.get_backup_peers}) do
                    local peers = get(u) or {}
                    for _, p in ipairs(peers) do
                        ngx.say(p.name, " ", p.down and "down" or "up")
                    end
                end
            }
        }
        location = /shm {
            default_type text/plain;
            content_by_lua_block {
                local d = ngx.shared[ngx.var.arg_shm or "healthcheck"]
                ngx.say(tostring(d:get(ngx.var.arg_key)))
            }
        }
        location / {
            proxy_pass http://$arg_u;
            proxy_next_upstream off;
            proxy_connect_timeout 2s;
            proxy_read_timeout 3s;
        }
    }
'''


def hc_conf(upstreams, checkers, port, workers=1, extra_http='', main='', shm_size='8m',
            error_level='info'):
    """A whole nginx.conf: upstreams, checkers in init_worker, the status server."""
    http = '''
    lua_shared_dict healthcheck %s;
    lua_socket_log_errors off;
%s
%s
    init_by_lua_block { require "resty.upstream.healthcheck" }
    init_worker_by_lua_block {
%s
    }
%s
''' % (shm_size, extra_http, '\n'.join(upstreams), '\n'.join(checkers),
       STATUS_SERVER % {'port': port})
    return conf_wrap(http, workers=workers, main=main, error_level=error_level)


def status(port):
    st, _, body = http_get('127.0.0.1', port, '/status')
    assert st == 200, body
    return body.decode()


def peer_states(port):
    """{addr: 'UP'|'DOWN'} from the text status page (all upstreams)."""
    out = {}
    for line in status(port).splitlines():
        m = re.match(r'^        (\S+) (UP|DOWN)$', line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def wait_state(port, addr, state, timeout=10):
    wait_for(lambda: peer_states(port).get(addr) == state, timeout=timeout,
             what='%s to be %s; status:\n%s' % (addr, state, '(see below)'))


def local_views(port, upstream, want_workers, timeout=10):
    """Ask until every worker (by pid) answered /local; {pid: {addr: up|down}}."""
    views = {}

    def collect():
        st, _, body = http_get('127.0.0.1', port, '/local?u=' + upstream)
        lines = body.decode().splitlines()
        pid = int(lines[0].split()[1])
        views[pid] = dict(l.split() for l in lines[1:])
        return len(views) >= want_workers
    wait_for(collect, timeout=timeout, interval=0.005, what='all workers to answer')
    return views



@pytest.fixture
def backends():
    """backends(n, port=8080, tls=None) -> list of started Backends on a fresh
    127.x.y.0/24 subnet (addresses .11, .12, ...); all stopped at teardown."""
    made = []

    def make(n, port=8080, tls=None, net=None):
        """The seed's port 8080 when free on the subnet, else a random port
        (something on this host may listen on 0.0.0.0:8080)."""
        for attempt in range(6):
            net = net or subnet()
            p = port if attempt < 3 else random.randint(20000, 30000)
            out = []
            try:
                for i in range(n):
                    out.append(Backend('%s.%d' % (net, 11 + i), p, tls=tls).start())
            except OSError:
                for b in out:
                    b.stop()
                net = None
                continue
            made.extend(out)
            return out
        raise AssertionError('no free backend subnet/port')
    yield make
    for b in made:
        b.stop()


@pytest.fixture
def blackhole():
    made = []

    def make(ip, port=8080):
        b = Blackhole(ip, port).start()
        made.append(b)
        return b
    yield make
    for b in made:
        b.stop()


def free_port6():
    with socket.socket(socket.AF_INET6) as s:
        s.bind(('::1', 0))
        return s.getsockname()[1]
