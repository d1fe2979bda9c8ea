"""Small real HTTP(S) backends for tests, on loopback addresses.

    b = Backend('127.0.1.11', 8080, name='foo1').start()
    b.hits['/readyz']        # requests seen per path
    b.stop()                 # listener closed: connections are refused
    b.start()                # and back

TLS modes: tls=SSLContext serves TLS only; with dual=True the same port also
answers plain HTTP (the first byte tells a TLS ClientHello from a request line),
so a config that health-checks over https and proxies over http can reach it.
"""
import collections
import os
import pathlib
import socket
import ssl
import subprocess
import threading
import time


class Backend:
    def __init__(self, host, port, name=None, tls=None, dual=False, status=200, delay=0.0,
                 status_line=None):
        self.host, self.port = host, port
        self.name = name or '%s:%d' % (host, port)
        self.tls, self.dual = tls, dual
        self.status, self.delay, self.status_line = status, delay, status_line
        self.hits = collections.Counter()
        self.lock = threading.Lock()
        self.sock = None
        self.thread = None

    # -- lifecycle -------------------------------------------------------
    def start(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(128)
        s.settimeout(0.2)
        self.sock = s
        self.running = True
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.running = False
        if self.thread:
            self.thread.join(2)
        if self.sock:
            self.sock.close()
        self.sock = self.thread = None

    def total(self, path=None):
        with self.lock:
            return self.hits[path] if path else sum(self.hits.values())

    # -- serving ---------------------------------------------------------
    def _accept_loop(self):
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            conn.settimeout(10)
            if self.tls is not None:
                first = conn.recv(1, socket.MSG_PEEK)
                if not (self.dual and first and first != b'\x16'):
                    conn = self.tls.wrap_socket(conn, server_side=True)
            f = conn.makefile('rb')
            while True:
                line = f.readline()
                if not line:
                    return
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
                path = parts[1] if len(parts) > 1 else '?'
                with self.lock:
                    self.hits[path] += 1
                if self.delay:
                    time.sleep(self.delay)
                body = ('%s %s\n' % (self.name, path)).encode()
                keep = parts[-1] == 'HTTP/1.1' and headers.get('connection', '').lower() != 'close'
                status = self.status_line or 'HTTP/1.1 %d X' % self.status
                conn.sendall(('%s\r\nX-Backend: %s\r\nContent-Length: %d\r\n'
                              'Connection: %s\r\n\r\n' % (status, self.name, len(body),
                                                          'keep-alive' if keep else 'close')
                              ).encode() + body)
                if not keep:
                    return
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass


class TestPKI:
    """A CA and server certificates made with the openssl CLI."""

    __test__ = False   # not a test class, despite the name

    def __init__(self, directory):
        self.dir = pathlib.Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_key, self.ca_crt = self.dir / 'ca.key', self.dir / 'ca.crt'
        self._openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256',
                      '-nodes', '-days', '2', '-subj', '/CN=nginx-portable test CA',
                      '-keyout', self.ca_key, '-out', self.ca_crt)

    def _openssl(self, *args):
        subprocess.run(['openssl', *map(str, args)], check=True, capture_output=True)

    def issue(self, name, sans=None):
        """A leaf certificate for `name` (and SANs) signed by this CA: (crt, key)."""
        key, csr, crt = (self.dir / (name + ext) for ext in ('.key', '.csr', '.crt'))
        ext = self.dir / (name + '.ext')
        ext.write_text('subjectAltName=' + ','.join('DNS:' + s for s in (sans or [name])) + '\n')
        self._openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
                      '-subj', '/CN=' + name, '-keyout', key, '-out', csr)
        self._openssl('x509', '-req', '-in', csr, '-CA', self.ca_crt, '-CAkey', self.ca_key,
                      '-CAcreateserial', '-days', '2', '-extfile', ext, '-out', crt)
        return crt, key

    def server_context(self, name):
        crt, key = self.issue(name)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(crt, key)
        return ctx

    def system_like_bundle(self, path):
        """The machine's CA bundle plus this CA: what SSL_CERT_FILE may point at."""
        system = pathlib.Path('/etc/ssl/certs/ca-certificates.crt')
        text = system.read_text() if system.exists() else ''
        pathlib.Path(path).write_text(text + self.ca_crt.read_text())
        return path
