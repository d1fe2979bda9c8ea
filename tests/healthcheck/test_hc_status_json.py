"""Health as data: hc.status_json() (strict JSON: valid UTF-8, no duplicate
keys) per upstream and per peer, and the extended Prometheus families for
transitions and the last change (promtool clean)."""
import re
import time

from conftest import free_port, http_get, wait_for
from hcutil import hc_conf, wait_state
from support.confs import checker_lua, upstream_block
from support.probes import get_json, promtool

JSON_SERVER = r'''
    server {
        listen 127.0.0.1:%d;
        location = /health.json {
            default_type application/json;
            content_by_lua_block {
                local doc, err = require("resty.upstream.healthcheck").status_json()
                ngx.print(doc or err)
            }
        }
    }
'''


def start(nginx_factory, b):
    port, jport = free_port(), free_port()
    conf = hc_conf([upstream_block('foo', [b[0].addr, b[1].addr], backup=[b[2].addr]),
                    upstream_block('bar', ['127.0.0.1:1'])],
                   [checker_lua('foo', interval=100, timeout=300, fall=1, rise=1,
                                valid_statuses=[200])],
                   port, extra_http=JSON_SERVER % jport)
    n = nginx_factory(conf, wait_ports=[('127.0.0.1', port), ('127.0.0.1', jport)])
    return n, port, jport


def peer(doc, u, name):
    return next(p for p in doc['upstreams'][u]['peers'] if p['name'] == name)


def test_status_json(nginx_factory, backends):
    b = backends(3)
    b[1].status, b[1].mode = 500, 'status'
    n, port, jport = start(nginx_factory, b)
    wait_state(port, b[1].addr, 'DOWN')
    wait_for(lambda: get_json(jport, '/health.json')['upstreams']['foo']['peers'][0]['checks'] >= 2,
             what='checks recorded')
    doc = get_json(jport, '/health.json')
    assert set(doc) == {'time', 'upstreams'} and abs(doc['time'] - time.time()) < 60
    assert set(doc['upstreams']) >= {'foo', 'bar'}
    foo, bar = doc['upstreams']['foo'], doc['upstreams']['bar']
    assert foo['checked'] is True and bar['checked'] is False
    assert [p['role'] for p in foo['peers']] == ['primary', 'primary', 'backup']

    up, down, backup = (peer(doc, 'foo', x.addr) for x in b)
    assert up['state'] == 'UP' and up['checked'] is True and up['last_failure'] is None
    assert up['transitions'] == 0 and up['since'] is None
    assert isinstance(up["last_check"], (int, float)) and abs(up['last_check'] - time.time()) < 60
    assert 0 <= up['last_check_duration'] < 1
    assert down['state'] == 'DOWN' and down['transitions'] == 1 and down['since'] > 0
    assert down['last_failure']['reason'] == 'status'
    assert down['last_failure']['message'] == 'bad status code from %s: 500' % b[1].addr
    assert down['consecutive_failures'] == 0 and down['consecutive_successes'] == 0
    assert backup['role'] == 'backup' and backup['state'] == 'UP'
    assert set(up) == {'name', 'role', 'state', 'checked', 'consecutive_failures',
                       'consecutive_successes', 'checks', 'last_check',
                       'last_check_duration', 'since', 'transitions', 'last_failure'}
    assert bar['peers'][0]['state'] == 'UP' and bar['peers'][0]['checked'] is False


def test_extended_metrics_transitions_and_last_change(nginx_factory, backends):
    b = backends(3)
    n, port, jport = start(nginx_factory, b)
    b[0].status, b[0].mode = 500, 'status'
    wait_state(port, b[0].addr, 'DOWN')
    b[0].mode = 'ok'
    wait_state(port, b[0].addr, 'UP')
    text = http_get('127.0.0.1', port, '/metrics?extended=1')[2].decode()
    ok, out = promtool(text)
    assert ok, out
    lab = 'name="foo",endpoint="%s",role="PRIMARY"' % b[0].addr
    assert re.search(r'^nginx_upstream_peer_transitions_total\{%s\} 2$' % re.escape(lab), text, re.M)
    m = re.search(r'^nginx_upstream_peer_last_change_timestamp_seconds\{%s\} ([\d.]+)$'
                  % re.escape(lab), text, re.M)
    assert m and abs(float(m.group(1)) - time.time()) < 60, text
    lab2 = 'name="foo",endpoint="%s",role="PRIMARY"' % b[1].addr
    assert re.search(r'^nginx_upstream_peer_last_change_timestamp_seconds\{%s\} 0$'
                     % re.escape(lab2), text, re.M)
    assert '# TYPE nginx_upstream_peer_transitions_total counter' in text
    # the plain page stays the contract's, byte for byte a prefix of the extended one
    plain = http_get('127.0.0.1', port, '/metrics')[2].decode()
    assert text.startswith(plain) and 'transitions' not in plain
    doc = get_json(jport, '/health.json')
    assert peer(doc, 'foo', b[0].addr)['transitions'] == 2
