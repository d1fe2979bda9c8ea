"""Lua errors raised inside OpenSSL's callbacks (ssl_certificate_by_lua runs
under SSL_do_handshake) end the handshake, never the worker.

OpenSSL is built without unwind tables (build/flags.sh, issue 29): LuaJIT's
error unwinding must stop at the Lua thread that runs the handler, before
any OpenSSL frame; a walk into OpenSSL would abort the worker."""
import socket
import ssl

import pytest

from conftest import conf_wrap, free_port
from support.pki import PKI

CONF = r'''
    server {
        listen 127.0.0.1:%(port)d ssl;
        ssl_certificate %(crt)s;
        ssl_certificate_key %(key)s;
        ssl_certificate_by_lua_block {
            local name = require("ngx.ssl").server_name()
            local function deep(n)
                if n == 0 then error("boom from " .. name) end
                return deep(n - 1) + 1
            end
            if name == "error.test" then
                deep(50)
            elseif name == "pcall.test" then
                assert(not pcall(deep, 50))
            elseif name == "ffi.test" then
                local ffi = require "ffi"
                ffi.cdef[[int ngx_tls_callbacks_test_missing(void);]]
                ffi.C.ngx_tls_callbacks_test_missing()
            end
        }
        location / { return 200 "ok\n"; }
    }
'''


def handshake(port, name):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(('127.0.0.1', port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname=name) as t:
            t.sendall(b'GET / HTTP/1.0\r\n\r\n')
            return t.recv(4096)


@pytest.fixture
def tls_nginx(nginx_factory, tmp_path):
    crt, key = PKI(tmp_path / 'pki').issue('ok.test')
    port = free_port()
    n = nginx_factory(conf_wrap(CONF % {'port': port, 'crt': crt, 'key': key}),
                      wait_ports=[('127.0.0.1', port)])
    return n, port


@pytest.mark.parametrize('name, reason', [('error.test', 'boom from error.test'),
                                          ('ffi.test', 'ngx_tls_callbacks_test_missing')])
def test_an_error_in_ssl_certificate_by_lua_fails_the_handshake_only(tls_nginx, name, reason):
    n, port = tls_nginx
    worker, = n.worker_pids()
    for _ in range(3):
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            handshake(port, name)
    assert handshake(port, 'pcall.test').endswith(b'ok\n')
    assert handshake(port, 'ok.test').endswith(b'ok\n')
    assert n.worker_pids() == [worker]
    log = n.error_log
    assert log.count(reason) >= 3, log[-3000:]
    assert 'exited on signal' not in log and 'panic' not in log
