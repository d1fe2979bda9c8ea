"""`match` for http checks against a backend with chosen statuses, headers and
bodies: each part's mismatch is a failure with its own reason, the body is
read up to `body_max` only, and a response trickled past the deadline fails
by timeout."""
import re
import threading

import pytest

from conftest import free_port, http_get, wait_for
from hcutil import hc_conf, wait_state
from support.backends import ANSWERS, Backend
from support.confs import LuaExpr, checker_lua, upstream_block
from support.probes import peer_states, promtool


def start(nginx_factory, b, match, **opts):
    port = free_port()
    for k, v in (('interval', 100), ('timeout', 400), ('fall', 1), ('rise', 1)):
        opts.setdefault(k, v)
    conf = hc_conf([upstream_block('foo', [x.addr for x in b])],
                   [checker_lua('foo', match=LuaExpr(match), **opts)], port)
    n = nginx_factory(conf, wait_ports=[('127.0.0.1', port)])
    return n, port


def failures(port, addr, reason):
    text = http_get('127.0.0.1', port, '/metrics?extended=1')[2].decode()
    assert promtool(text)[0]
    m = re.search(r'nginx_upstream_peer_check_failures_total\{name="foo",endpoint="%s",'
                  r'role="PRIMARY",reason="%s"\} (\d+)' % (re.escape(addr), reason), text)
    return int(m.group(1))


def test_status_class(nginx_factory, backends):
    ok, bad = backends(2)
    bad.status, bad.mode = 302, 'status'
    n, port = start(nginx_factory, [ok, bad], '{status = "2xx"}')
    wait_state(port, bad.addr, 'DOWN')
    wait_for(lambda: ok.health >= 3, what='checks')
    assert peer_states(port)[ok.addr] == 'UP'
    assert 'response does not match from %s: status 302' % bad.addr in n.error_log
    assert failures(port, bad.addr, 'match_status') >= 1
    bad.status = 204
    wait_state(port, bad.addr, 'UP')


def test_header_pattern(nginx_factory, backends):
    ok, bad, missing = backends(3)
    ok.headers = {'X-Role': 'primary-7'}
    bad.headers = {'X-Role': 'replica-2'}
    n, port = start(nginx_factory, [ok, bad, missing],
                    '{status = {200}, header = {["X-Role"] = "^primary%-%d+$"}}')
    wait_state(port, bad.addr, 'DOWN')
    wait_state(port, missing.addr, 'DOWN')
    assert peer_states(port)[ok.addr] == 'UP'
    assert 'response does not match from %s: header X-Role: replica-2' % bad.addr in n.error_log
    assert 'response does not match from %s: header X-Role missing' % missing.addr in n.error_log
    assert failures(port, bad.addr, 'match_header') >= 1
    bad.headers = {'x-role': 'primary-3'}           # names are case-insensitive
    wait_state(port, bad.addr, 'UP')


def test_body_pattern_and_body_max(nginx_factory, backends):
    ok, bad, late = backends(3)
    ok.health_body = b'{"status":"pass","db":"ok"}'
    bad.health_body = b'{"status":"fail"}'
    # the pattern only after the first 100 bytes: not read, so not matched
    late.health_body = b'x' * 200 + b'"status":"pass"'
    n, port = start(nginx_factory, [ok, bad, late],
                    '{body = \'"status":"pass"\', body_max = 100}')
    wait_state(port, bad.addr, 'DOWN')
    wait_state(port, late.addr, 'DOWN')
    wait_for(lambda: ok.health >= 3, what='checks')
    assert peer_states(port)[ok.addr] == 'UP'
    assert 'response does not match from %s: body (100 bytes)' % late.addr in n.error_log
    assert failures(port, bad.addr, 'match_body') >= 1
    late.health_body = b'"status":"pass"' + b'x' * 100000     # big body: read no further
    wait_state(port, late.addr, 'UP')


def _answer_trickle(self, conn, version, body, keep):
    """Headers at once, then the body one byte every 0.2 s."""
    conn.sendall(b'HTTP/1.0 200 OK\r\nContent-Length: 50\r\n\r\n')
    for _ in range(50):
        if self.stopped.wait(0.2):
            break
        conn.sendall(b'x')
    return False


@pytest.fixture
def trickle_mode():
    ANSWERS['trickle_body'] = _answer_trickle
    yield
    del ANSWERS['trickle_body']


def test_trickled_body_fails_by_the_deadline(nginx_factory, backends, trickle_mode):
    (b,) = backends(1)
    b.mode = 'trickle_body'
    n, port = start(nginx_factory, [b], '{body = "y"}', timeout=500)
    wait_state(port, b.addr, 'DOWN')
    assert 'failed to receive body from %s: timeout' % b.addr in n.error_log
    text = http_get('127.0.0.1', port, '/metrics?extended=1')[2].decode()
    m = re.search(r'last_check_duration_seconds\{name="foo",endpoint="%s",role="PRIMARY"\} ([\d.]+)'
                  % re.escape(b.addr), text)
    # the body's deadline is timeout after the status line: never 50 x 0.2 s
    assert m and float(m.group(1)) < 3 * 0.5 + 0.3, text
