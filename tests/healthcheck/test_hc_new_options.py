"""Validation of the options beyond the contract (issue 16): each bad value
gives nil, err naming the option, after the contract's own checks, and
starts nothing; good values are accepted."""
from conftest import free_port, http_get
from support.confs import conf_wrap
from test_hc_options import LUA

BASE = 'type = "http", http_req = "x", shm = "hc", upstream = "foo"'
TCP = 'type = "tcp", shm = "hc", upstream = "foo"'

CASES = [
    # tcp: http_req is not used, send/expect are tcp-only
    ('{%s, http_req = "x"}' % TCP, 'bad "http_req" option: not used by "tcp" checks'),
    ('{%s, send = 5}' % TCP, 'bad "send" option'),
    ('{%s, send = ""}' % TCP, 'bad "send" option'),
    ('{%s, expect = "[unclosed"}' % TCP, 'bad "expect" option: Lua pattern expected'),
    ('{%s, send = "x"}' % BASE, 'bad "send" option: not used by "http" checks'),
    ('{%s, expect = "x"}' % BASE, 'bad "expect" option: not used by "http" checks'),
    # match
    ('{%s, match = "2xx"}' % BASE, 'bad "match" option: table expected'),
    ('{%s, match = {}}' % BASE, 'bad "match" option: "status", "header" or "body" expected'),
    ('{%s, match = {stat = "2xx"}}' % BASE, 'bad "match" option: unknown key "stat"'),
    ('{%s, match = {status = "2yy"}}' % BASE, 'bad "match" option: "status"'),
    ('{%s, match = {status = {200, 99}}}' % BASE, 'bad "match" option: "status" element 2'),
    ('{%s, match = {status = {}}}' % BASE, 'bad "match" option: "status": non-empty array'),
    ('{%s, match = {header = {X = "(" }}}' % BASE, 'bad "match" option: "header" X: Lua pattern'),
    ('{%s, match = {header = {["bad name"] = "x"}}}' % BASE, 'bad "match" option: "header": bad header name'),
    ('{%s, match = {header = "x"}}' % BASE, 'bad "match" option: "header": table'),
    ('{%s, match = {body = "%%"}}' % BASE, 'bad "match" option: "body": Lua pattern'),
    ('{%s, match = {body = "x", body_max = 0}}' % BASE, 'bad "match" option: "body_max"'),
    ('{%s, match = {body = "x", body_max = 2^21}}' % BASE, 'bad "match" option: "body_max"'),
    ('{%s, match = {status = "2xx"}}' % TCP, 'bad "match" option: not used by "tcp" checks'),
    # schedule
    ('{%s, jitter = -1}' % BASE, 'bad "jitter" option'),
    ('{%s, jitter = 1.5}' % BASE, 'bad "jitter" option'),
    ('{%s, jitter = 0/0}' % BASE, 'bad "jitter" option'),
    ('{%s, interval_unhealthy = 0}' % BASE, 'bad "interval_unhealthy" option'),
    ('{%s, interval_unhealthy = "1s"}' % BASE, 'bad "interval_unhealthy" option'),
    ('{%s, initial_state = "DOWN"}' % BASE, 'bad "initial_state" option: one of "up", "down" expected'),
    ('{%s, initial_state = true}' % BASE, 'bad "initial_state" option'),
    # host, passive
    ('{%s, host = false}' % BASE, 'bad "host" option'),
    ('{%s, passive = 3}' % BASE, 'bad "passive" option: table expected'),
    ('{%s, passive = {fall = 0}}' % BASE, 'bad "passive" option: "fall"'),
    ('{%s, passive = {window = 1.5}}' % BASE, 'bad "passive" option: "window"'),
    ('{%s, passive = {statuses = {}}}' % BASE, 'bad "passive" option: "statuses"'),
    ('{%s, passive = {statuses = {502, 1000}}}' % BASE, 'bad "passive" option: "statuses" element 2'),
    ('{%s, passive = {falls = 2}}' % BASE, 'bad "passive" option: unknown key "falls"'),
    # the contract's errors come first
    ('{%s, fall = 0, jitter = -1}' % BASE, '"fall"'),
    ('{type = "tcp", upstream = "foo", send = 5}', '"shm" option required'),
]

GOOD = [
    '{%s}' % TCP,
    '{%s, send = "PING\\r\\n", expect = "^%%+PONG"}' % TCP,
    '{%s, match = {status = {200, "3xx"}, header = {["Content-Type"] = "json"}, body = "ok",'
    ' body_max = 100}}' % BASE,
    '{%s, match = {status = "2XX"}}' % BASE,
    '{%s, jitter = 0, interval_unhealthy = 2^31 - 1, initial_state = "down"}' % BASE,
    '{%s, host = true, passive = {}}' % BASE.replace('"http"', '"https"'),
    '{%s, passive = {fall = 10000, window = 1, statuses = {500}}}' % BASE,
]


def run(nginx_factory, cases):
    port = free_port()
    body = ',\n'.join('                    ' + c for c in cases)
    nginx_factory(conf_wrap(LUA % (port, body)), wait_ports=[('127.0.0.1', port)])
    st, _, out = http_get('127.0.0.1', port, '/validate')
    assert st == 200, out
    return out.decode().split('\n')


def test_bad_new_options(nginx_factory):
    lines = run(nginx_factory, [c for c, _ in CASES])
    for (opts, want), got in zip(CASES, lines):
        assert got.startswith('nil|'), (opts, got)
        assert want in got, (opts, got)
    assert lines[len(CASES):] == ['keys=0', 'timers=0'], lines[len(CASES):]


def test_good_new_options(nginx_factory):
    # each valid table is a checker for "foo" (the first wins, the others are refused
    # as a second checker): validation passed for all of them
    lines = run(nginx_factory, GOOD)
    assert lines[0] == 'true|nil', lines[0]
    for opts, got in zip(GOOD[1:], lines[1:len(GOOD)]):
        assert got == 'nil|checker already spawned for upstream foo', (opts, got)
