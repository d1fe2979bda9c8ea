"""`type = "tcp"` checks against real TCP services: connect only, `send` and
`expect` (a Lua pattern in the first bytes read), each failure with its
reason and log line, and the same bounds as http checks (a silent service
fails by timeout within the deadline)."""
import re
import time

from conftest import free_port, http_get, wait_for
from hcutil import hc_conf, wait_state
from support.backends import tcp_services  # noqa: F401 (fixture)
from support.confs import LuaExpr, checker_lua, upstream_block
from support.probes import peer_states, promtool

INTERVAL, TIMEOUT = 100, 300


def start(nginx_factory, services, **opts):
    port = free_port()
    opts.update(type='tcp', http_req=None)
    for k, v in (('interval', INTERVAL), ('timeout', TIMEOUT), ('fall', 1), ('rise', 1)):
        opts.setdefault(k, v)
    conf = hc_conf([upstream_block('db', [t.addr for t in services])],
                   [checker_lua('db', **opts)], port)
    n = nginx_factory(conf, wait_ports=[('127.0.0.1', port)])
    return n, port


def failures(port, addr, reason):
    text = http_get('127.0.0.1', port, '/metrics?extended=1')[2].decode()
    m = re.search(r'nginx_upstream_peer_check_failures_total\{name="db",endpoint="%s",'
                  r'role="PRIMARY",reason="%s"\} (\d+)' % (re.escape(addr), reason), text)
    return int(m.group(1)) if m else None


def test_connect_only(nginx_factory, tcp_services):
    up, gone = tcp_services(2, mode='close')    # connect only: the answer does not matter
    gone.stop()
    n, port = start(nginx_factory, [up, gone])
    wait_state(port, gone.addr, 'DOWN')
    wait_for(lambda: up.connections >= 3, what='checks of the live service')
    assert peer_states(port)[up.addr] == 'UP'
    assert 'failed to connect to %s: connection refused' % gone.addr in n.error_log
    assert failures(port, gone.addr, 'connect') >= 1
    gone.start()
    wait_state(port, gone.addr, 'UP')


def test_send_and_expect(nginx_factory, tcp_services):
    echo, silent = tcp_services(2)
    silent.mode = 'silent'
    n, port = start(nginx_factory, [echo, silent], send=LuaExpr(r'"PING\r\n"'),
                    expect='^PING')
    wait_state(port, silent.addr, 'DOWN')
    wait_for(lambda: echo.received.count(b'PING\r\n') >= 3, what='PINGs echoed')
    assert peer_states(port)[echo.addr] == 'UP'
    assert 'failed to receive from %s: timeout' % silent.addr in n.error_log
    assert failures(port, silent.addr, 'timeout') >= 1


def test_expect_mismatch_has_its_own_reason(nginx_factory, tcp_services):
    (smtp,) = tcp_services(1, mode='banner')
    smtp.banner = b'554 go away\r\n'
    n, port = start(nginx_factory, [smtp], expect='^220 ')
    wait_state(port, smtp.addr, 'DOWN')
    assert 'unexpected answer from %s: "554 go away\\x0d\\x0a"' % smtp.addr in n.error_log
    assert failures(port, smtp.addr, 'expect') >= 1
    ok, out = promtool(http_get('127.0.0.1', port, '/metrics?extended=1')[2])
    assert ok, out
    smtp.banner = b'220 mail.test ESMTP\r\n'
    wait_state(port, smtp.addr, 'UP')


def test_silent_peer_fails_within_the_deadline(nginx_factory, tcp_services):
    """expect against a peer that never answers: one check takes timeout
    (after the connect), never more than 3 x timeout."""
    (silent,) = tcp_services(1, mode='silent')
    n, port = start(nginx_factory, [silent], expect='.', interval=100, timeout=400, fall=2)
    t0 = time.monotonic()
    wait_state(port, silent.addr, 'DOWN')
    took = time.monotonic() - t0
    # fall (2) x (interval + timeout) plus scheduling slack
    assert took < 2 * (0.1 + 0.4) + 1.5, took
    text = http_get('127.0.0.1', port, '/metrics?extended=1')[2].decode()
    m = re.search(r'nginx_upstream_peer_last_check_duration_seconds\{name="db",endpoint="%s",'
                  r'role="PRIMARY"\} ([\d.]+)' % re.escape(silent.addr), text)
    assert m and 0.35 <= float(m.group(1)) < 1.2, text
