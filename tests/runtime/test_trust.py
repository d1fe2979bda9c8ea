"""Cosocket TLS verification trusts the system CA bundle when no
lua_ssl_trusted_certificate is set (build/patches/lua-nginx-module/0002)."""
import pytest

from conftest import conf_wrap, free_port, http_get
from support.backends import Backend
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
                local sess, err = sock:sslhandshake(reuse, ngx.var.arg_name, true)
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
