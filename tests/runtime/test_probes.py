"""Issue 28, item 5: the probes of the default config.  /healthz: nginx answers.
/readyz: the configuration is loaded and the health checkers are checking --
not "every upstream has a live peer", which unreadied every replica at once
when one backend went down; that condition is /readyz/upstreams, apart."""
import re

import pytest

from conftest import BUNDLE, Nginx, conf_wrap, copy_bundle, free_port, http_get, port_open, wait_for
from support.confs import checker_lua, upstream_block
from support.hc_keys import hc_key

PROXY, METRICS, CONTROL = 8080, 18080, 18081
FOO = ['127.0.1.11:8080', '127.0.1.12:8080']


def get(path, port=METRICS):
    st, _, body = http_get('127.0.0.1', port, path)
    return st, body.decode().strip()


def test_default_config_readiness_survives_a_backend_outage(own_network, tmp_path):
    if any(port_open('127.0.0.1', p) for p in (PROXY, METRICS, CONTROL)):
        pytest.skip('the default ports are taken on this machine')
    n = Nginx(copy_bundle(tmp_path / 'bundle'))
    r = n.run()
    assert r.returncode == 0, r.stderr + n.error_log
    try:
        wait_for(lambda: port_open('127.0.0.1', CONTROL), what='demo control port')
        assert get('/healthz') == (200, 'ok')
        wait_for(lambda: get('/readyz') == (200, 'ready'), timeout=15, what='/readyz 200')
        assert get('/readyz/upstreams') == (200, 'live')
        # every peer of upstream foo dies
        for peer in FOO:
            assert http_get('127.0.0.1', CONTROL, '/demo/kill?backend=' + peer, method='POST')[0] == 200
        wait_for(lambda: get('/readyz/upstreams') == (503, 'not live: no live peer in upstream foo'),
                 timeout=20, what='/readyz/upstreams 503 for foo')
        # clients now get 502 from this replica, which stays ready (as do all the others)
        assert http_get('127.0.0.1', PROXY, '/api/x')[0] == 502
        assert get('/readyz') == (200, 'ready')
        assert get('/healthz') == (200, 'ok')
    finally:
        n.stop()


READYZ_CONF = """
    lua_shared_dict healthcheck 1m;
%s
    init_worker_by_lua_block {%s
    }
    server {
        listen 127.0.0.1:%d;
        location = /readyz {
            content_by_lua_block {
                local ok, why = require("resty.upstream.healthcheck").checkers_ready()
                ngx.status = ok and 200 or 503
                ngx.say(ok and "ready" or "not ready: " .. why)
            }
        }
        # the test's stand-in for a checker that stopped: its last check long ago
        location = /age {
            content_by_lua_block {
                ngx.shared.healthcheck:set(ngx.var.arg_key, ngx.now() - 1000)
            }
        }
    }"""


def test_readyz_waits_for_the_first_checks(nginx_factory, blackhole):
    """A checker that has not finished a check yet (its only peer never
    completes the TCP handshake, timeout 8 s) keeps /readyz at 503."""
    hole = blackhole('127.0.3.41')
    port = free_port()
    conf = conf_wrap(READYZ_CONF % (upstream_block('slow', [hole.addr]),
                                    checker_lua('slow', interval=1000, timeout=8000), port))
    nginx_factory(conf, wait_ports=[('127.0.0.1', port)])
    assert get('/readyz', port) == (503, 'not ready: health checker of upstream slow has not checked yet')


def test_readyz_says_when_a_checker_stopped_checking(nginx_factory, backends):
    """The latest check older than 3 intervals (+ 4 timeouts + 1 s): 503, and
    the reason says how old.  interval 30 s: no check comes in between."""
    peer, = backends(1)
    port = free_port()
    conf = conf_wrap(READYZ_CONF % (upstream_block('quiet', [peer.addr]),
                                    checker_lua('quiet', interval=30000, timeout=1000), port))
    nginx_factory(conf, wait_ports=[('127.0.0.1', port)])
    wait_for(lambda: get('/readyz', port) == (200, 'ready'), timeout=15, what='first check')
    key = hc_key('last_check', 'quiet', 'primary', peer.addr)
    assert http_get('127.0.0.1', port, '/age?key=' + key)[0] == 200
    st, body = get('/readyz', port)
    assert st == 503 and re.fullmatch(r'not ready: health checker of upstream quiet has not checked for '
                                      r'100\d\.\d s \(limit 95\.0 s\)', body), (st, body)


def test_probe_locations_answer_every_address():
    """A kubelet or load balancer probes from outside this host: the probes
    are not behind monitoring-allow.conf (the other monitoring URLs are)."""
    conf = (BUNDLE / 'conf' / 'nginx.conf').read_text()
    for loc in ('location = /healthz {', 'location = /readyz {'):
        block = conf.split(loc, 1)[1].split('\n        }', 1)[0]
        assert 'allow all;' in block, loc
    block = conf.split('location = /readyz/upstreams {', 1)[1].split('\n        }', 1)[0]
    assert 'allow all;' not in block
