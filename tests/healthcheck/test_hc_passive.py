"""Passive checks: the `passive` option alone feeds live traffic's results
into the checker's state (ngx.upstream's log handler judges every proxied
request in C; issue 29: no log_by_lua line any more).  A peer failing live
requests (listed statuses, connect errors, timeouts, each attempt of a
proxy_next_upstream chain) is DOWN after `passive.fall` failures, with no
further client errors once DOWN (proxy_next_upstream off), long before the
next active check; active checks bring it back.  A config that still calls
hc.report() in log_by_lua counts each failure once."""
import re
import time

import pytest

from conftest import free_port, http_get, wait_for
from hcutil import hc_conf
from support.confs import LuaExpr, checker_lua, upstream_block
from support.hc_keys import hc_key
from support.probes import status_page, status_peers

PROXY_SERVER = r'''
    server {
        listen 127.0.0.1:%(proxy)d;
        proxy_connect_timeout 1s;
        proxy_read_timeout 400ms;
        %(log)s
        location / {
            proxy_pass http://foo;
            proxy_next_upstream off;
        }
        location /retry/ {
            proxy_pass http://foo;
            proxy_next_upstream error timeout http_503;
        }
        location /var/ {
            # no group name for the request: each address names its group
            proxy_pass http://$arg_u;
            proxy_next_upstream off;
        }
        location /alias/ {
            # a group without a checker: hc.report("foo") counts it for foo
            proxy_pass http://alias;
            proxy_next_upstream off;
            log_by_lua_block { require("resty.upstream.healthcheck").report("foo") }
        }
    }
'''
REPORT = 'log_by_lua_block { require("resty.upstream.healthcheck").report() }'


def proxy_server(proxy, report=False):
    return PROXY_SERVER % {'proxy': proxy, 'log': REPORT if report else ''}


def start(nginx_factory, addrs, passive='{fall = 3, window = 10000}', report=False, **opts):
    """max_fails=0: nginx's own failure accounting would route around a
    refusing peer for fail_timeout by itself and hide the checker's work.
    report: the old way, log_by_lua hc.report() on the proxy server."""
    port, proxy = free_port(), free_port()
    for k, v in (('interval', 4000), ('timeout', 500), ('fall', 2), ('rise', 1),
                 ('valid_statuses', [200])):
        opts.setdefault(k, v)
    conf = hc_conf([upstream_block('alias', [a + ' max_fails=0' for a in addrs[1:]]),
                    upstream_block('foo', [a + ' max_fails=0' for a in addrs])],
                   [checker_lua('foo', passive=LuaExpr(passive), **opts)], port,
                   extra_http=proxy_server(proxy, report))
    n = nginx_factory(conf, wait_ports=[('127.0.0.1', port), ('127.0.0.1', proxy)])
    return n, port, proxy


def peer_states(port):
    """{peer: 'UP'|'DOWN'} of foo (`alias` shares an address)"""
    return dict(status_peers(status_page(port))['foo'])


def get(proxy, path='/x'):
    try:
        return http_get('127.0.0.1', proxy, path)[0]
    except OSError:
        return 'error'


def shm(port, key):
    return http_get('127.0.0.1', port, '/shm?key=' + key)[2].decode().strip()


def until_down(port, proxy, addr, path='/x', limit=40):
    """Requests until addr is DOWN: (statuses before, seconds)."""
    seen, t0 = [], time.monotonic()
    while peer_states(port).get(addr) != 'DOWN':
        assert len(seen) < limit, ('not DOWN after %d requests' % limit, seen)
        seen.append(get(proxy, path))
    return seen, time.monotonic() - t0


@pytest.mark.parametrize('how', ['status', 'refused', 'timeout'])
def test_down_after_fall_live_failures(nginx_factory, backends, how):
    good, bad = backends(2, scope='all')
    # the failures come after the first (passed) active round; the next one is 4 s away
    n, port, proxy = start(nginx_factory, [good.addr, bad.addr],
                           passive='{fall = 3, statuses = {503}, window = 10000}')
    wait_for(lambda: good.health >= 1 and bad.health >= 1, what='first round')
    if how == 'status':
        bad.status, bad.mode = 503, 'status'
    elif how == 'refused':
        bad.stop()                     # 502 from nginx: not listed, a connect error
    else:
        bad.mode, bad.delay = 'slow', 2.0          # 504 after proxy_read_timeout
    t0 = time.monotonic()
    seen, took = until_down(port, proxy, bad.addr)
    errors = [s for s in seen if s != 200]
    assert len(errors) == 3, seen                  # exactly passive.fall failing requests
    assert took < 3.0, took                        # long before the next active round
    print('\npassive detection (%s): %.3f s, %d requests' % (how, took, len(seen)))
    assert 'peer %s is turned down after 3 failure(s)' % bad.addr in n.error_log
    # once DOWN: no client errors (proxy_next_upstream off)
    assert all(get(proxy) == 200 for _ in range(20))
    # the active checks bring it back once it is healthy again
    if how == 'refused':
        bad.start()
    bad.mode = 'ok'
    wait_for(lambda: peer_states(port)[bad.addr] == 'UP', timeout=10, what='UP again')
    assert 'peer %s is turned up after 1 success(es)' % bad.addr in n.error_log


def test_reload_and_quit_with_passive_checks(nginx_factory, backends):
    """The drainer (a light thread waiting for the C handler's post) lets an
    old worker exit at once, and the new workers watch again (the C side is
    per cycle): DOWN after exactly fall failures after a reload too."""
    good, bad = backends(2, scope='all')
    n, port, proxy = start(nginx_factory, [good.addr, bad.addr])
    wait_for(lambda: good.health >= 1, what='first round')
    n.reload(timeout=5)
    bad.status, bad.mode = 503, 'status'
    seen, took = until_down(port, proxy, bad.addr, path='/retry/x')
    assert set(seen) == {200} and bad.clients == 3, (seen, bad.clients)
    t0 = time.monotonic()
    n.stop(timeout=5)
    assert time.monotonic() - t0 < 5


def test_every_attempt_of_a_next_upstream_chain(nginx_factory, backends):
    good, bad = backends(2, scope='all')
    n, port, proxy = start(nginx_factory, [good.addr, bad.addr])
    wait_for(lambda: good.health >= 1, what='first round')
    bad.status, bad.mode = 503, 'status'
    seen, took = until_down(port, proxy, bad.addr, path='/retry/x')
    # every client request succeeded (retried on good), yet bad's attempts counted
    assert set(seen) == {200}, seen
    assert bad.clients == 3, bad.clients


def test_group_from_the_address(nginx_factory, backends):
    good, bad = backends(2, scope='all')
    n, port, proxy = start(nginx_factory, [good.addr, bad.addr])
    wait_for(lambda: good.health >= 1, what='first round')
    bad.status, bad.mode = 502, 'status'
    seen, took = until_down(port, proxy, bad.addr, path='/var/x?u=foo')
    assert len([s for s in seen if s != 200]) == 3, seen


def test_window_forgets_old_failures(nginx_factory, backends):
    good, bad = backends(2, scope='all')
    n, port, proxy = start(nginx_factory, [good.addr, bad.addr],
                           passive='{fall = 2, window = 300}')
    wait_for(lambda: good.health >= 1, what='first round')
    bad.status, bad.mode = 502, 'status'
    # one failure per window: never 2 within 300 ms
    key = hc_key('passive_failures', 'foo', 'primary', bad.addr)
    for _ in range(4):
        before = bad.clients
        wait_for(lambda: get(proxy) and bad.clients > before, what='a request to bad')
        assert peer_states(port)[bad.addr] == 'UP'
        assert shm(port, key) == '1'
        wait_for(lambda: shm(port, key) == 'nil', what='the window to expire')
    assert peer_states(port)[bad.addr] == 'UP'
    # two within the window: DOWN
    seen, took = until_down(port, proxy, bad.addr)
    assert len([s for s in seen if s != 200]) == 2, seen


def failures_counted(port, addr):
    """(the window's passive failure count, the failures-by-reason counter)"""
    key = hc_key('passive_failures', 'foo', 'primary', addr)
    metrics = http_get('127.0.0.1', port, '/metrics?extended=true')[2].decode()
    m = re.search(r'nginx_upstream_peer_check_failures_total\{[^}]*endpoint="%s"[^}]*'
                  r'reason="passive"\} (\d+)' % re.escape(addr), metrics)
    return shm(port, key), m and int(m.group(1))


@pytest.mark.parametrize('report', [False, True], ids=['passive_alone', 'with_report_line'])
def test_each_failure_counted_once(nginx_factory, backends, report):
    """Exact counts: the `passive` option alone counts every failing attempt
    (old code: nothing without log_by_lua); a config that keeps
    log_by_lua hc.report() counts it once, not once per path."""
    good, bad = backends(2, scope='all')
    n, port, proxy = start(nginx_factory, [good.addr, bad.addr], report=report,
                           passive='{fall = 100, statuses = {503}, window = 60000}')
    wait_for(lambda: good.health >= 1 and bad.health >= 1, what='first round')
    bad.status, bad.mode = 503, 'status'
    seen = []
    while len([s for s in seen if s == 503]) < 5:
        assert len(seen) < 40, seen
        seen.append(get(proxy))
    assert set(seen) <= {200, 503}, seen
    wait_for(lambda: failures_counted(port, bad.addr) == ('5', 5),
             what='5 passive failures counted', timeout=5)
    time.sleep(0.3)
    assert failures_counted(port, bad.addr) == ('5', 5)
    assert peer_states(port)[bad.addr] == 'UP'


def test_report_names_a_group_for_requests_of_another(nginx_factory, backends):
    """hc.report("foo") in a location of a group without a checker (`alias`,
    whose server is foo's) still counts for foo: what the C handler does not
    judge, hc.report() does, as before."""
    good, bad = backends(2, scope='all')
    n, port, proxy = start(nginx_factory, [good.addr, bad.addr])
    wait_for(lambda: good.health >= 1, what='first round')
    bad.status, bad.mode = 502, 'status'
    seen, took = until_down(port, proxy, bad.addr, path='/alias/x')
    assert seen == [502, 502, 502], seen


def test_report_without_passive_checkers_is_a_no_op(nginx_factory, backends):
    (b,) = backends(1, scope='all')
    port, proxy = free_port(), free_port()
    conf = hc_conf([upstream_block('alias', [b.addr]), upstream_block('foo', [b.addr])],
                   [checker_lua('foo', interval=4000)], port,
                   extra_http=proxy_server(proxy, report=True))
    n = nginx_factory(conf, wait_ports=[('127.0.0.1', proxy)])
    b.status, b.mode = 503, 'status'
    assert all(get(proxy) == 503 for _ in range(10))
    assert peer_states(port)[b.addr] == 'UP'
    assert '[error]' not in n.error_log


SLOW_BACKENDS = r'''
    server {
        listen %(a)s:%(port)d;
        listen %(b)s:%(port)d;
        location = /slow { content_by_lua_block { ngx.sleep(1) ngx.say("late") } }
        location / { return 200 "$server_addr"; }
    }
'''


def test_clients_alone_cannot_take_every_peer_down(nginx_factory):
    """An attacker's requests to a slow URL get 504 from every peer alike
    (issue 26, item 2): passive checks keep at least half of the peers UP,
    so a legitimate client keeps getting answers (old code: both peers
    DOWN, 502 for every request until the next active round)."""
    port, proxy, bport = free_port(), free_port(), free_port()
    a, b = '127.0.91.1', '127.0.91.2'
    conf = hc_conf([upstream_block('alias', ['%s:%d' % (a, bport)]),
                    upstream_block('foo', ['%s:%d max_fails=0' % (x, bport) for x in (a, b)])],
                   [checker_lua('foo', passive=LuaExpr('{fall = 3, window = 10000}'),
                                interval=4000, timeout=500, fall=2, rise=1,
                                valid_statuses=[200])], port,
                   extra_http=proxy_server(proxy)
                   + SLOW_BACKENDS % {'a': a, 'b': b, 'port': bport})
    n = nginx_factory(conf, wait_ports=[('127.0.0.1', port), ('127.0.0.1', proxy)])
    wait_for(lambda: set(peer_states(port).values()) == {'UP'}, what='both UP')
    attack = [get(proxy, '/slow') for _ in range(12)]
    assert attack.count(504) >= 6, attack
    states = peer_states(port)
    assert list(states.values()).count('UP') >= 1, states
    legit = [get(proxy, '/x') for _ in range(40)]
    assert legit.count(200) == 40, legit
    assert 'passive checks leave at least half of the peers up, 0 of 2 would remain' \
        in n.error_log, n.error_log[-3000:]
