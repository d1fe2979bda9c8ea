"""The seed's "Comprehensive Runtime Example" http{} block, verbatim but for
addresses and ports, runs end to end: health checks over http (foo) and https
with verification against the system trust store (bar), peers go DOWN and UP,
traffic reaches healthy peers only, and the merged /metrics is valid Prometheus
text with both sources up -- or says which one is missing."""
import os
import pathlib
import re
import shutil
import socket

import pytest

from conftest import ROOT, free_port, http_get, wait_for
from support.backends import Backend
from support.pki import PKI
from support.probes import peer_states_in, promtool, status_page

SEED = ROOT.parent / 'shared' / 'seed' / 'lua-runtime-modules.md'


def backend_port():
    """The seed's port 8080, unless a wildcard listener on this machine holds it."""
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(('127.0.1.11', 8080))
        return 8080
    except OSError:
        return free_port('127.0.1.11')


PORT = backend_port()
FOO = [('127.0.1.11', PORT), ('127.0.1.12', PORT)]
BAR = [('127.0.2.11', PORT), ('127.0.2.12', PORT)]


def seed_http_block():
    text = SEED.read_text()
    section = text.split('## Comprehensive Runtime Example', 1)[1]
    return re.search(r'```nginx\n(.*?)```', section, re.S).group(1)


def seed_conf(proxy_port, metrics_port):
    http = seed_http_block()
    assert 'server 10.0.1.11:8080;' in http and 'listen 18080;' in http
    http = http.replace('10.0.', '127.0.').replace(':8080;', ':%d;' % PORT)
    http = http.replace('listen 80;', 'listen 127.0.0.1:%d;' % proxy_port)
    http = http.replace('listen 18080;', 'listen 127.0.0.1:%d;' % metrics_port)
    return """
daemon on;
worker_processes 2;
error_log logs/error.log info;
pid logs/nginx.pid;
events { worker_connections 1024; }
""" + http


@pytest.fixture
def pki(tmp_path):
    return PKI(tmp_path / 'pki')


@pytest.fixture
def seed_backends(pki, own_network):
    """The seed's four backends on their fixed addresses: in the test's own
    network namespace where possible, so port 8080 is free there.  (Its own
    name: the shared `backends` fixture is a factory of another shape.)"""
    bar_ctx = pki.server_context('bar.internal')
    foo = [Backend(h, p, name='foo%d' % i).start() for i, (h, p) in enumerate(FOO, 1)]
    bar = [Backend(h, p, name='bar%d' % i, tls=bar_ctx, dual=True).start()
           for i, (h, p) in enumerate(BAR, 1)]
    yield foo, bar
    for b in foo + bar:
        b.stop()


def start_seed(nginx_factory, pki, tmp_path, name='seed', lualib_without=None, edit=None):
    proxy, metrics = free_port(), free_port()
    conf = seed_conf(proxy, metrics)
    if edit:
        conf = edit(conf)
    env = {'SSL_CERT_FILE': str(pki.system_like_bundle(tmp_path / 'system-bundle.crt'))}
    n = nginx_factory(conf, name=name, env=env, start=False)
    if lualib_without:
        lualib = n.prefix / 'lualib'
        lualib.unlink()
        shutil.copytree(pathlib.Path(os.environ.get('NP_BUNDLE', ROOT / 'dist/nginx-portable'))
                        / 'lualib', lualib)
        (lualib / lualib_without).unlink()
    n.start(workers=2, wait_ports=[('127.0.0.1', proxy), ('127.0.0.1', metrics)])
    return n, proxy, metrics


def status_of(metrics_port):
    page = status_page(metrics_port)
    return peer_states_in(page), page


def test_seed_example_end_to_end(nginx_factory, seed_backends, pki, tmp_path):
    foo, bar = seed_backends
    n, proxy, metrics = start_seed(nginx_factory, pki, tmp_path, name='seed-e2e')

    # checks run against every peer, https ones verified against the system-like bundle
    wait_for(lambda: all(b.total('/readyz') >= 2 for b in foo), timeout=15, what='foo checks')
    wait_for(lambda: all(b.total('/healthz') >= 1 for b in bar), timeout=15, what='bar checks')
    states, page = status_of(metrics)
    assert states == {'127.0.1.11:%d' % PORT: 'UP', '127.0.1.12:%d' % PORT: 'UP',
                      '127.0.2.11:%d' % PORT: 'UP', '127.0.2.12:%d' % PORT: 'UP'}, page
    assert 'Upstream foo' in page and 'Upstream bar' in page
    assert 'verify error' not in n.error_log and 'handshake failed' not in n.error_log

    # traffic: /api/ -> foo, / -> bar (plain http, as the seed writes it)
    for _ in range(8):
        assert http_get('127.0.0.1', proxy, '/api/x')[0] == 200
        assert http_get('127.0.0.1', proxy, '/y')[0] == 200
    assert foo[0].total('/api/x') > 0 and foo[1].total('/api/x') > 0
    assert bar[0].total('/y') + bar[1].total('/y') == 8

    body = http_get('127.0.0.1', metrics, '/metrics')[2].decode()
    ok, why = promtool(body + '\n')
    assert ok, why + body[:3000]
    assert 'nginx_metrics_source_up{source="healthcheck_module"} 1' in body
    assert 'nginx_metrics_source_up{source="vts"} 1' in body
    assert ('nginx_upstream_status_info{name="foo",endpoint="127.0.1.11:%d",status="UP",role="PRIMARY"} 1'
            % PORT) in body
    assert 'nginx_vts_server_requests_total' in body
    assert 'nginx_vts_upstream_requests_total{upstream="foo"' in body

    # kill foo1: DOWN within fall(3) x interval(2s) + timeout(1s) + one interval
    foo[0].stop()
    wait_for(lambda: status_of(metrics)[0].get('127.0.1.11:%d' % PORT) == 'DOWN', timeout=9 + 4,
             interval=0.2, what='foo1 DOWN')
    body = http_get('127.0.0.1', metrics, '/metrics')[2].decode()
    assert ('nginx_upstream_status_info{name="foo",endpoint="127.0.1.11:%d",status="DOWN",role="PRIMARY"} 1'
            % PORT) in body
    assert promtool(body + '\n')[0]
    before = foo[1].total('/api/z')
    for _ in range(10):
        assert http_get('127.0.0.1', proxy, '/api/z')[0] == 200
    assert foo[1].total('/api/z') - before == 10     # all to the healthy peer
    assert 'peer 127.0.1.11:%d is turned down' % PORT in n.error_log

    # revive: UP after rise(2) successes
    foo[0].start()
    wait_for(lambda: status_of(metrics)[0].get('127.0.1.11:%d' % PORT) == 'UP', timeout=2 * 2 + 2 + 4,
             interval=0.2, what='foo1 UP')
    wait_for(lambda: http_get('127.0.0.1', proxy, '/api/back')[0] == 200 and foo[0].total('/api/back') > 0,
             timeout=5, what='traffic to foo1 again')


def test_metrics_says_when_healthcheck_module_is_missing(nginx_factory, seed_backends, pki, tmp_path):
    n, proxy, metrics = start_seed(nginx_factory, pki, tmp_path, name='seed-nohc',
                                   lualib_without='resty/upstream/healthcheck.lua')
    body = http_get('127.0.0.1', metrics, '/metrics')[2].decode()
    assert 'nginx_metrics_source_up{source="healthcheck_module"} 0' in body
    assert 'nginx_metrics_source_up{source="vts"} 1' in body
    assert re.search(r'^# healthcheck module unavailable: .*resty.upstream.healthcheck', body, re.M), body
    # The seed's comment carries require()'s multi-line message verbatim, which
    # the text format rejects; our default config folds it (test_default_config).
    ok, why = promtool(body + '\n')
    assert not ok and 'line 2' in why
    assert 'failed to spawn health checker' in n.error_log or 'module' in n.error_log


def test_metrics_says_when_traffic_status_is_missing(nginx_factory, seed_backends, pki, tmp_path):
    def drop_display(conf):
        return re.sub(r'location = /status/format/prometheus \{.*?\}', '', conf, flags=re.S)
    n, proxy, metrics = start_seed(nginx_factory, pki, tmp_path, name='seed-novts', edit=drop_display)
    body = http_get('127.0.0.1', metrics, '/metrics')[2].decode()
    assert 'nginx_metrics_source_up{source="vts"} 0' in body
    assert 'nginx_metrics_source_up{source="healthcheck_module"} 1' in body
    assert '# vts metrics unavailable: status=404' in body
    assert promtool(body + '\n')[0]
