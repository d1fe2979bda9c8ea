"""`match` for http checks against a backend with chosen statuses, headers and
bodies: each part's mismatch is a failure with its own reason, the body is
read up to `body_max` only, a response trickled past the deadline fails
by timeout, a body trickled in 64-byte pieces costs the same per byte at
16 KiB and 512 KiB (issue 26, item 10), and a pattern in a small last piece
of a response that never ends is seen without waiting for the deadline."""
import re
import socket
import threading

import pytest

from conftest import free_port, http_get, wait_for
from hcutil import hc_conf, wait_state
from support.backends import ANSWERS, Backend
from support.confs import LuaExpr, checker_lua, upstream_block
from support.probes import peer_states, promtool


def start(nginx_factory, b, match, name='n', **opts):
    port = free_port()
    for k, v in (('interval', 100), ('timeout', 400), ('fall', 1), ('rise', 1)):
        opts.setdefault(k, v)
    conf = hc_conf([upstream_block('foo', [x.addr for x in b])],
                   [checker_lua('foo', match=LuaExpr(match), **opts)], port)
    n = nginx_factory(conf, name=name, workers=1, wait_ports=[('127.0.0.1', port)])
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


def cpu_ticks(pid):
    """utime + stime of a process, in clock ticks."""
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_per_mib(nginx_factory, size, checks):
    """The checker worker's CPU ticks per MiB of body read, over `checks`
    checks of one peer that trickles a `size`-byte body in 64-byte pieces
    (the `body` pattern is its last 3 bytes: every byte is read)."""
    from support.hostile import Hostile
    from support.backends import subnet
    h = Hostile('%s.11:%d' % (subnet(), free_port()), 'trickle_body', every=0.0002,
                body=b'x' * (size - 3) + b'END').start()
    try:
        n, port = start(nginx_factory, [h], '{body = "END", body_max = 1048576}',
                        name='n%d' % size, interval=10, timeout=20000, fall=1000, rise=1)
        (pid,) = n.worker_pids()
        wait_for(lambda: h.answered >= 1, timeout=60, what='a first whole body')
        a0, t0 = h.answered, cpu_ticks(pid)
        wait_for(lambda: h.answered >= a0 + checks, timeout=120, interval=0.01,
                 what='%d trickled bodies' % checks)
        ticks = cpu_ticks(pid) - t0
        assert peer_states(port)[h.addr] == 'UP'          # every body matched
        assert 'response does not match' not in n.error_log
        n.stop()
        return ticks / (checks * size / 1048576)
    finally:
        h.stop()


def test_trickled_body_is_read_in_linear_time(nginx_factory):
    """Issue 26, item 10: the same bytes cost the same per byte in a 16 KiB
    body and in a 512 KiB one (1 MiB read each way).  Reading that re-joins and
    re-searches the whole body per 64-byte piece costs ~16x more per byte
    in the big one."""
    small = cpu_per_mib(nginx_factory, 16384, 64)
    big = cpu_per_mib(nginx_factory, 524288, 2)
    print('checker CPU ticks per MiB: 16 KiB bodies %.1f, 512 KiB bodies %.1f' % (small, big))
    assert big < 3 * max(small, 5), (small, big)


def _answer_late_tail(self, conn, version, body, keep):
    """Keep-alive, no length: 4 KiB of body, 0.1 s later the pattern in a
    small last piece, then the connection stays open."""
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.sendall(b'HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n' + b'x' * 4096)
    if not self.stopped.wait(0.1):
        conn.sendall(b'"status":"pass"')
        self.stopped.wait(5)
    return False


def test_pattern_in_a_last_small_piece_is_seen_before_the_deadline(nginx_factory, backends):
    """The body is tested in doubling sizes (linear time), and also when the
    socket goes quiet: a response that never ends matches as soon as its
    last small piece came, not at the deadline."""
    (b,) = backends(1)
    ANSWERS['late_tail'] = _answer_late_tail
    try:
        b.mode = 'late_tail'
        n, port = start(nginx_factory, [b], '{body = \'"status":"pass"\', body_max = 65536}',
                        timeout=3000, interval=100)
        wait_for(lambda: b.health >= 3, what='checks')
        assert peer_states(port)[b.addr] == 'UP'
        text = http_get('127.0.0.1', port, '/metrics?extended=1')[2].decode()
        m = re.search(r'last_check_duration_seconds\{name="foo",endpoint="%s",role="PRIMARY"\} ([\d.]+)'
                      % re.escape(b.addr), text)
        assert m and float(m.group(1)) < 1.0, text      # 0.1 s + QUIET, not the 3 s timeout
    finally:
        del ANSWERS['late_tail']
