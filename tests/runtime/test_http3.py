"""HTTP/3 end to end (nginx 1.30's http_v3_module on OpenSSL 3.5's QUIC API):
a request over QUIC served by Lua and one proxied to a health-checked
upstream, both counted by traffic-status.  The client is Debian's
ngtcp2-client (gtlsclient), a real QUIC stack of its own."""
import shutil
import subprocess

import pytest

from conftest import free_port, wait_for
from support.backends import Backend
from support.confs import checker_lua, conf_wrap
from support.net import http_get
from support.pki import PKI
from support.probes import parse_json, peer_states

GTLSCLIENT = shutil.which('gtlsclient')
pytestmark = pytest.mark.skipif(not GTLSCLIENT, reason='gtlsclient missing: bash build/install-deps.sh')

CONF = '''
    vhost_traffic_status_zone;
    lua_shared_dict healthcheck 1m;
    lua_socket_log_errors off;
    upstream h3back {
        server %(backend)s;
    }
    init_worker_by_lua_block {
%(checker)s
    }
    server {
        listen 127.0.0.1:%(port)d quic reuseport;
        listen 127.0.0.1:%(port)d ssl;
        server_name h3.test;
        ssl_certificate %(crt)s;
        ssl_certificate_key %(key)s;
        add_header Alt-Svc 'h3=":%(port)d"; ma=60';
        location = /lua {
            content_by_lua_block { ngx.say("lua over ", ngx.var.server_protocol) }
        }
        location = /proxy {
            proxy_pass http://h3back/;
        }
    }
    server {
        listen 127.0.0.1:%(status)d;
        vhost_traffic_status off;
        location = /vts { vhost_traffic_status_display; vhost_traffic_status_display_format json; }
        location = /status {
            content_by_lua_block { ngx.print(require("resty.upstream.healthcheck").status_page()) }
        }
    }
'''


def h3_get(port, path, tmp_path):
    """One HTTP/3 request with gtlsclient; the body it saved."""
    out = tmp_path / ('dl' + path.replace('/', '_'))
    out.mkdir()
    r = subprocess.run([GTLSCLIENT, '-q', '--exit-on-first-stream-close', '--download=%s' % out,
                        '127.0.0.1', str(port), 'https://h3.test:%d%s' % (port, path)],
                       capture_output=True, text=True, timeout=30)
    saved = list(out.iterdir())
    assert r.returncode == 0 and len(saved) == 1, (r.returncode, r.stdout[-1000:], r.stderr[-1000:])
    return saved[0].read_bytes()


def test_http3_request_served_by_lua_and_proxied_to_a_checked_upstream(nginx_factory, tmp_path):
    pki = PKI(tmp_path / 'pki')
    crt, key = pki.issue('h3.test')
    backend = Backend('127.0.0.1', free_port(), name='backend-one').start()
    try:
        port, status = free_port(), free_port()
        conf = CONF % dict(backend=backend.addr, port=port, status=status, crt=crt, key=key,
                           checker=checker_lua('h3back', interval=100, timeout=500, fall=1, rise=1,
                                               valid_statuses=[200]))
        nginx_factory(conf_wrap(conf), wait_ports=[('127.0.0.1', port), ('127.0.0.1', status)])
        wait_for(lambda: peer_states(status).get(backend.addr) == 'UP', what='the backend checked UP')

        assert h3_get(port, '/lua', tmp_path) == b'lua over HTTP/3.0\n'
        assert h3_get(port, '/proxy', tmp_path) == b'backend-one'

        st, _, body = http_get('127.0.0.1', status, '/vts')
        assert st == 200
        doc = parse_json(body)
        zone = doc['serverZones']['h3.test']
        assert zone['requestCounter'] == 2 and zone['responses']['2xx'] == 2
        (peer,) = doc['upstreamZones']['h3back']
        assert peer['server'] == backend.addr and peer['requestCounter'] == 1
    finally:
        backend.stop()
