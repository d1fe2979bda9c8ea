"""The linked dependency set is the locked one: lua-nginx-module with the
resty.core of build/deps.lock from lualib/, PCRE2 with JIT (nginx core and ngx.re), and
OpenSSL 3.5, whose default groups put the hybrid X25519MLKEM768 first: a client
built from the same OpenSSL tree (deps prefix bin/openssl) negotiates it with
the bundle by default, and ssl_ecdh_curve / ssl_conf_command still choose."""
import pathlib
import subprocess

import pytest

from conftest import BUNDLE, ROOT, conf_wrap, free_port, http_get
from support.lock import locked_version, ngx_lua_version

CERT = BUNDLE / 'conf' / 'demo' / 'bar.internal.crt'
KEY = BUNDLE / 'conf' / 'demo' / 'bar.internal.key'

VERSIONS = r'''
    server {
        listen 127.0.0.1:%d;
        location = /versions {
            content_by_lua_block {
                local ffi = require "ffi"
                require "resty.core.regex"      -- declares ngx_http_lua_ffi_pcre_version
                ngx.say(ngx.config.ngx_lua_version)
                ngx.say(require("resty.core.base").version)
                ngx.say(package.searchpath("resty.core", package.path))
                ngx.say(ffi.string(ffi.C.ngx_http_lua_ffi_pcre_version()))
                local m = ngx.re.match("key=value42", [[(\w+)=([a-z]+)(\d+)]], "jo")
                ngx.say(m and (m[1] .. " " .. m[3]) or "nomatch")
            }
        }
        location ~ ^/re/(?<word>[a-z]+)/(\d+)$ { return 200 "$word $2\n"; }
    }
'''


def deps_openssl():
    r = subprocess.run(['bash', '-c', '. "$1/build/common.sh"; np_depsdir', '_', str(ROOT)],
                       capture_output=True, text=True)
    cli = pathlib.Path(r.stdout.strip()) / 'bin' / 'openssl'
    if r.returncode != 0 or not cli.is_file():
        pytest.skip('no openssl CLI in the dependency prefix (run build/build.sh)')
    return str(cli)


def tls_server(nginx_factory, extra=''):
    port = free_port()
    conf = conf_wrap(r'''
    server {
        listen 127.0.0.1:%d ssl;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_protocols TLSv1.2 TLSv1.3;
        %s
        location / { return 200 "$ssl_protocol $ssl_curve $ssl_cipher\n"; }
    }''' % (port, CERT, KEY, extra))
    nginx_factory(conf, wait_ports=[('127.0.0.1', port)])
    return port


def s_client(cli, port, *args):
    r = subprocess.run([cli, 's_client', '-connect', '127.0.0.1:%d' % port, '-tls1_3',
                        '-ign_eof', *args],
                       input='GET / HTTP/1.0\r\n\r\n', capture_output=True, text=True, timeout=30)
    return r.stdout + r.stderr


def test_lua_module_resty_core_and_pcre2_versions(nginx_factory):
    port = free_port()
    nginx_factory(conf_wrap(VERSIONS % port, main='pcre_jit on;'), wait_ports=[('127.0.0.1', port)])
    status, _, body = http_get('127.0.0.1', port, '/versions')
    assert status == 200, body
    lua_version, core_version, core_path, pcre, match = body.decode().split('\n')[:5]
    assert lua_version == str(ngx_lua_version())
    assert core_version == locked_version('lua-resty-core').split('rc')[0]
    assert core_path.endswith('lualib/resty/core.lua') and core_path.startswith('/')
    assert pcre.startswith(locked_version('pcre2') + ' ')                  # PCRE2; PCRE1 says 8.x
    assert match == 'key 42'
    status, _, body = http_get('127.0.0.1', port, '/re/abc/17')
    assert (status, body) == (200, b'abc 17\n')


def test_nginx_reports_openssl_35():
    out = subprocess.run([str(BUNDLE / 'sbin' / 'nginx'), '-V'], capture_output=True, text=True).stderr
    assert 'built with OpenSSL 3.5.7' in out
    assert 'running with OpenSSL' not in out            # static: build and run library are one


def test_tls13_negotiates_x25519mlkem768_by_default(nginx_factory):
    cli = deps_openssl()
    port = tls_server(nginx_factory)
    out = s_client(cli, port)
    assert 'Negotiated TLS1.3 group: X25519MLKEM768' in out, out[-3000:]
    # nginx names a group without a NID by its code point (0x11ec)
    assert 'TLSv1.3 0x11ec ' in out or 'TLSv1.3 X25519MLKEM768 ' in out, out[-3000:]


@pytest.mark.parametrize('curves', ['X25519', 'X25519:prime256v1:secp384r1'])   # the README's opt-out
def test_ssl_ecdh_curve_still_chooses_the_group(nginx_factory, curves):
    cli = deps_openssl()
    port = tls_server(nginx_factory, 'ssl_ecdh_curve %s;' % curves)
    out = s_client(cli, port)
    # s_client names a classical group as the peer's temporary key
    assert 'Peer Temp Key: X25519,' in out and 'MLKEM' not in out, out[-3000:]
    assert 'TLSv1.3 X25519 ' in out


def test_ssl_conf_command_still_applies(nginx_factory):
    cli = deps_openssl()
    port = tls_server(nginx_factory, 'ssl_conf_command Groups secp384r1;\n'
                                     '        ssl_conf_command Ciphersuites TLS_CHACHA20_POLY1305_SHA256;')
    out = s_client(cli, port)
    assert 'TLSv1.3 secp384r1 TLS_CHACHA20_POLY1305_SHA256' in out, out[-3000:]


def test_unknown_curve_is_a_config_error(nginx_factory):
    n = nginx_factory(conf_wrap('''
    server {
        listen 127.0.0.1:%d ssl;
        ssl_certificate %s; ssl_certificate_key %s;
        ssl_ecdh_curve NoSuchCurve;
    }''' % (free_port(), CERT, KEY)), start=False)
    r = n.test_config()
    assert r.returncode != 0
    assert 'NoSuchCurve' in r.stderr and 'nginx.conf' in r.stderr
