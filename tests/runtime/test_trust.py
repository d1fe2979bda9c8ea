"""Cosocket TLS verification trusts the system CA bundle when no
lua_ssl_trusted_certificate is set (build/patches/lua-nginx-module/0002); the
bundle is chosen and opened at start but parsed only by the first handshake
that verifies (issue 29).  The cosocket SSL context of default settings is
made by a worker's first handshake, not at start (0007)."""
import os
import re
import ssl
import subprocess

import pytest

from conftest import conf_wrap, free_port, http_get, make_prefix
from support.backends import Backend
from support.bundle import EXEC_WRAPPER
from support.pki import PKI

HANDSHAKE = r'''
    server {
        listen 127.0.0.1:%(port)d;
        location = /tls {
            content_by_lua_block {
                local sock = ngx.socket.tcp()
                sock:settimeout(2000)
                local ok, err = sock:connect("127.0.3.21", %(backend)d)
                if not ok then return ngx.say("connect: ", err) end
                -- ?reuse=false: the form that returns no session
                local reuse = ngx.var.arg_reuse ~= "false" and nil or false
                local verify = ngx.var.arg_verify ~= "false"
                local sess, err = sock:sslhandshake(reuse, ngx.var.arg_name, verify)
                if not sess then return ngx.say("handshake: ", err) end
                ngx.say("verified")
                sock:close()
            }
        }
    }
'''


@pytest.fixture
def tls_backend(tmp_path):
    pki = PKI(tmp_path / 'pki')
    port = free_port('127.0.3.21')
    b = Backend('127.0.3.21', port, tls=pki.server_context('bar.internal')).start()
    yield pki, port
    b.stop()


def run(nginx_factory, port, backend, env, extra='', name='bar.internal', query=''):
    n = nginx_factory(conf_wrap(extra + HANDSHAKE % {'port': port, 'backend': backend}),
                      env=env, wait_ports=[('127.0.0.1', port)])
    return http_get('127.0.0.1', port, '/tls?name=' + name + query)[2].decode().strip(), n


def test_system_bundle_with_the_ca_verifies(nginx_factory, tls_backend, tmp_path):
    pki, backend = tls_backend
    bundle = pki.system_like_bundle(tmp_path / 'bundle.crt')
    port = free_port()
    out, n = run(nginx_factory, port, backend, {'SSL_CERT_FILE': str(bundle)})
    assert out == 'verified'
    # said once per configuration load
    assert n.error_log.count('verifying against the system CA bundle "%s"' % bundle) == 1


def test_name_mismatch_fails_even_when_trusted(nginx_factory, tls_backend, tmp_path):
    pki, backend = tls_backend
    bundle = pki.system_like_bundle(tmp_path / 'bundle.crt')
    out, _ = run(nginx_factory, free_port(), backend, {'SSL_CERT_FILE': str(bundle)},
                 name='other.internal')
    assert out == 'handshake: certificate host mismatch', out


@pytest.mark.parametrize('query', ['', '&reuse=false'])
def test_ca_not_in_system_bundle_fails_verification(nginx_factory, tls_backend, query):
    # (a handshake that completes at once used to report success with
    # reuse=false: build/patches/lua-nginx-module/0003)
    pki, backend = tls_backend
    out, n = run(nginx_factory, free_port(), backend,
                 {'SSL_CERT_FILE': '/etc/ssl/certs/ca-certificates.crt'}, query=query)
    assert out.startswith('handshake: '), out
    assert 'unable to get local issuer certificate' in out or 'certificate verify failed' in out


def test_explicit_trusted_certificate_still_wins(nginx_factory, tls_backend):
    pki, backend = tls_backend
    out, n = run(nginx_factory, free_port(), backend,
                 {'SSL_CERT_FILE': '/etc/ssl/certs/ca-certificates.crt'},
                 extra='lua_ssl_trusted_certificate %s;\n' % pki.ca_crt)
    assert out == 'verified'


def bundle_fds(pid, path):
    """How many of the process's descriptors are open on path."""
    n = 0
    for fd in os.listdir('/proc/%d/fd' % pid):
        try:
            n += os.readlink('/proc/%d/fd/%s' % (pid, fd)) == str(path)
        except OSError:
            pass
    return n


def test_bundle_is_parsed_by_the_first_verifying_handshake(nginx_factory, tls_backend, tmp_path):
    """The master opens the bundle at start (a file only root may read: the
    worker runs as nobody, the default user, and still verifies); a worker holds it, unparsed,
    until a handshake verifies, which loads it and lets the descriptor go.
    A handshake that does not verify leaves it alone."""
    pki, backend = tls_backend
    bundle = pki.system_like_bundle(tmp_path / 'bundle.crt')
    os.chmod(bundle, 0o600)
    port = free_port()
    n = nginx_factory(conf_wrap(HANDSHAKE % {'port': port, 'backend': backend}),
                      env={'SSL_CERT_FILE': str(bundle)}, wait_ports=[('127.0.0.1', port)])
    worker, = n.worker_pids()
    assert bundle_fds(n.master_pid(), bundle) == 1
    assert bundle_fds(worker, bundle) == 1, 'the worker holds no unparsed bundle'
    get = lambda q: http_get('127.0.0.1', port, '/tls?name=bar.internal' + q)[2].decode().strip()
    assert get('&verify=false') == 'verified'
    assert bundle_fds(worker, bundle) == 1, 'a handshake that does not verify loaded the bundle'
    assert get('') == 'verified'
    assert bundle_fds(worker, bundle) == 0, 'the first verifying handshake did not load the bundle'
    assert get('') == 'verified'                   # from the loaded store
    assert get('&reuse=false') == 'verified'
    assert bundle_fds(n.master_pid(), bundle) == 1   # for the next workers
    assert n.error_log.count('verifying against the system CA bundle "%s"' % bundle) == 1
    assert 'cannot load the CA bundle' not in n.error_log


@pytest.mark.skipif(bool(EXEC_WRAPPER), reason='strace of the emulator')
def test_config_test_does_not_read_the_bundle(tmp_path):
    """`nginx -t` (and every start) used to parse the ~140 certificates of the
    bundle, 78 % of the instructions of a minimal configuration's test: now
    it is opened (its name is checked and logged), never read."""
    bundle = PKI(tmp_path / 'pki').system_like_bundle(tmp_path / 'bundle.crt')
    prefix = make_prefix(tmp_path / 'prefix', conf_wrap('server { listen 127.0.0.1:%d; }' % free_port()))
    trace = tmp_path / 'strace.txt'
    r = subprocess.run(['strace', '-f', '-qq', '-y', '-o', str(trace), '-e', 'trace=openat,read,pread64',
                        str(prefix / 'sbin' / 'nginx'), '-p', str(prefix) + '/', '-t'],
                       # (LeakSanitizer cannot run under ptrace: the ASan build's exit check off)
                       env=dict(os.environ, SSL_CERT_FILE=str(bundle), ASAN_OPTIONS='detect_leaks=0'),
                       capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    calls = trace.read_text()
    assert re.search(r'openat\(.*"%s", O_RDONLY' % re.escape(str(bundle)), calls), calls[-2000:]
    reads = re.findall(r'\b(?:read|pread64)\(\d+<%s>' % re.escape(str(bundle)), calls)
    assert reads == [], 'nginx -t read the CA bundle: %d reads' % len(reads)


def test_unreadable_bundle_is_reported_at_the_first_verifying_handshake(nginx_factory, tls_backend,
                                                                        tmp_path):
    """A bundle with no certificate in it: said when a handshake first needs
    it (OpenSSL's default paths then, as before), and verification fails with
    OpenSSL's own reason."""
    pki, backend = tls_backend
    junk = tmp_path / 'junk.crt'
    junk.write_text('not a certificate\n')
    port = free_port()
    out, n = run(nginx_factory, port, backend, {'SSL_CERT_FILE': str(junk)}, query='&verify=false')
    assert out == 'verified'
    assert 'cannot load the CA bundle' not in n.error_log
    out = http_get('127.0.0.1', port, '/tls?name=bar.internal')[2].decode().strip()
    assert out.startswith('handshake: ') and 'local issuer' in out, out
    assert n.error_log.count('cannot load the CA bundle "%s", using OpenSSL\'s default paths' % junk) == 1


def tls13_only_backend(pki):
    ctx = pki.server_context('bar.internal')
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    port = free_port('127.0.3.21')
    return Backend('127.0.3.21', port, tls=ctx).start(), port


@pytest.mark.parametrize('protocols, want', [('TLSv1.2', 'handshake: '), ('TLSv1.2 TLSv1.3', 'verified')])
def test_settings_apply_to_the_context_made_at_first_use(nginx_factory, tmp_path, protocols, want):
    """lua_ssl_protocols and lua_ssl_verify_depth cannot fail at start, so
    their context, too, is made by the first handshake: with them."""
    pki = PKI(tmp_path / 'pki')
    bundle = pki.system_like_bundle(tmp_path / 'bundle.crt')
    b, backend = tls13_only_backend(pki)
    try:
        out, n = run(nginx_factory, free_port(), backend, {'SSL_CERT_FILE': str(bundle)},
                     extra='lua_ssl_protocols %s;\nlua_ssl_verify_depth 2;\n' % protocols)
        assert out.startswith(want), out
    finally:
        b.stop()


def test_a_bad_cipher_list_still_fails_the_config_test(tmp_path):
    """A setting that can fail keeps its context made at start: `-t` says so."""
    prefix = make_prefix(tmp_path / 'prefix', conf_wrap('lua_ssl_ciphers NO-SUCH-CIPHER;\n'
                                                        'server { listen 127.0.0.1:%d; }' % free_port()))
    r = subprocess.run([str(prefix / 'sbin' / 'nginx'), '-p', str(prefix) + '/', '-t'],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert 'SSL_CTX_set_cipher_list("NO-SUCH-CIPHER") failed' in r.stderr, r.stderr
