"""https checks: SNI from `host`, chain and name verification with
`ssl_verify`, trust from lua_ssl_trusted_certificate or else the system CA
bundle (SSL_CERT_FILE here, so the test does not depend on the host's store)."""
import os
import re

import pytest

from conftest import free_port, wait_for
from hcutil import hc_conf, wait_state
from support.confs import LuaExpr, checker_lua, upstream_block
from support.pki import PKI, server_context
from support.probes import peer_states

# the checker's own fallback (Lua, loads into the cosocket SSL_CTX), or the
# build's lua-nginx-module patch (C, at configuration time) when present
SYSTEM_CA_LOG = r'(using the system CA bundle |verifying against the system CA bundle ")%s'

REQ = r'"GET /health HTTP/1.0\r\nHost: good.test\r\n\r\n"'


@pytest.fixture(scope='module')
def certs(tmp_path_factory):
    """ca.crt and a leaf for good.test signed by it (leaf.crt, leaf.key); evilca.crt,
    a CA the checker does not trust, with its own leaf for the same name (evilleaf)."""
    d = tmp_path_factory.mktemp('certs')
    PKI(d, 'ca').issue('good.test', stem='leaf')
    PKI(d, 'evilca').issue('good.test', stem='evilleaf')
    return str(d)


def server_tls(certs, leaf):
    return server_context('%s/%s.crt' % (certs, leaf), '%s/%s.key' % (certs, leaf))


def tls_backend(backends, certs, leaf='leaf'):
    ctx = server_tls(certs, leaf)
    seen = []
    ctx.sni_callback = lambda sock, name, c: seen.append(name)
    b = backends(1, tls=ctx)[0]
    b.sni = seen
    return b


def start(nginx_factory, b, extra_http='', main='user root;', env=None, **opts):
    # user root: lua-nginx-module re-reads lua_ssl_trusted_certificate in each worker
    # (init_worker merges a fake location conf), and pytest's tmp dirs are 0700
    port = free_port()
    opts.setdefault('interval', 100)
    opts.setdefault('timeout', 500)
    opts.setdefault('fall', 1)
    opts.setdefault('rise', 1)
    opts.setdefault('type', 'https')
    opts.setdefault('valid_statuses', [200])
    opts['http_req'] = LuaExpr(REQ)
    conf = hc_conf([upstream_block('foo', [b.addr])], [checker_lua('foo', **opts)], port,
                   extra_http=extra_http, main=main)
    n = nginx_factory(conf, env=env, wait_ports=[('127.0.0.1', port)])
    return n, port


def trusted(certs, ca='ca'):
    return 'lua_ssl_trusted_certificate %s/%s.crt;' % (certs, ca)


def wait_checked(b, n=3, nx=None):
    wait_for(lambda: b.health >= n, timeout=10, what='checks')


def test_https_verified_with_sni(nginx_factory, backends, certs):
    b = tls_backend(backends, certs)
    n, port = start(nginx_factory, b, extra_http=trusted(certs), host='good.test')
    wait_checked(b)
    assert peer_states(port)[b.addr] == 'UP'
    assert set(b.sni) == {'good.test'}
    assert '[error]' not in n.error_log


def test_verify_failure_untrusted_chain(nginx_factory, backends, certs):
    b = tls_backend(backends, certs, leaf='evilleaf')
    n, port = start(nginx_factory, b, extra_http=trusted(certs), host='good.test')
    wait_state(port, b.addr, 'DOWN')
    assert re.search(r'turned down after 1 failure.*failed to ssl handshake to %s: '
                     r'.*(certificate|issuer)' % re.escape(b.addr), n.error_log), \
        n.error_log[-1500:]
    assert b.health == 0     # never got as far as the request


def test_name_mismatch(nginx_factory, backends, certs):
    b = tls_backend(backends, certs)
    n, port = start(nginx_factory, b, extra_http=trusted(certs), host='other.test')
    wait_state(port, b.addr, 'DOWN')
    assert re.search(r'\[error\].*healthcheck: failed to ssl handshake to %s: '
                     r'certificate host mismatch' % re.escape(b.addr), n.error_log)
    assert 'other.test' in b.sni          # SNI follows `host`


def test_ssl_verify_off_accepts_any_certificate(nginx_factory, backends, certs):
    b = tls_backend(backends, certs, leaf='evilleaf')
    n, port = start(nginx_factory, b, extra_http=trusted(certs), host='other.test',
                    ssl_verify=False)
    wait_checked(b)
    assert peer_states(port)[b.addr] == 'UP'


def test_recovery_after_certificate_fix(nginx_factory, backends, certs):
    b = tls_backend(backends, certs, leaf='evilleaf')
    n, port = start(nginx_factory, b, extra_http=trusted(certs), host='good.test', rise=2)
    wait_state(port, b.addr, 'DOWN')
    b.tls = server_tls(certs, 'leaf')
    wait_state(port, b.addr, 'UP')
    assert 'turned up after 2 success(es)' in n.error_log


@pytest.mark.parametrize('ca,state', [('ca', 'UP'), ('evilca', 'DOWN')])
def test_system_ca_bundle_without_trusted_certificate(nginx_factory, backends, certs, ca, state):
    """No lua_ssl_trusted_certificate: the checker loads the system bundle
    (SSL_CERT_FILE first) into the cosockets' SSL context."""
    b = tls_backend(backends, certs)
    n, port = start(nginx_factory, b, main='user root; env SSL_CERT_FILE;',
                    env={'SSL_CERT_FILE': '%s/%s.crt' % (certs, ca)}, host='good.test')
    if state == 'UP':
        wait_checked(b)
        assert peer_states(port)[b.addr] == 'UP'
    else:
        wait_state(port, b.addr, 'DOWN')
        assert b.health == 0
    assert re.search(SYSTEM_CA_LOG % re.escape('%s/%s.crt' % (certs, ca)), n.error_log)


DISTRO_BUNDLES = ['/etc/ssl/cert.pem', '/etc/ssl/certs/ca-certificates.crt',
                  '/etc/pki/tls/certs/ca-bundle.crt']


@pytest.mark.skipif(not any(os.path.exists(p) for p in DISTRO_BUNDLES),
                    reason='no system CA bundle on this host')
def test_distro_ca_bundle_is_the_default(nginx_factory, backends, certs):
    """No lua_ssl_trusted_certificate and no SSL_CERT_FILE: the distro bundle is
    loaded (our test CA is not in it, so the peer fails verification)."""
    b = tls_backend(backends, certs)
    n, port = start(nginx_factory, b, host='good.test')
    wait_state(port, b.addr, 'DOWN')
    assert any(re.search(SYSTEM_CA_LOG % re.escape(p), n.error_log)
               for p in DISTRO_BUNDLES if os.path.exists(p))
    assert 'certificate' in n.error_log.split('turned down', 1)[1].splitlines()[0]
