"""The checker follows peers that DNS adds and removes while nginx runs
(`server NAME resolve`, nginx 1.27.3+), against a real DNS server on loopback
whose records change under a running nginx with 2 workers: a new peer is
checked within one interval, `initial_state = "down"` keeps it out of traffic
until `rise` checks pass, a dead peer DNS removes and re-adds is never routed
before it passes a check, a removed peer is forgotten (pages and shm), `host
= true` takes each peer's server line, churn keeps the shm bounded, passive checks
find a new peer by its address."""
import re
import threading
import time

import pytest

from conftest import free_port, http_get, wait_for
from hcutil import hc_conf
from support.confs import LuaExpr, checker_lua
from support.dns import DnsServer
from support.probes import parse_json, peer_states, promtool

KEYS_SERVER = '''
    server {
        listen 127.0.0.1:%d;
        location = /keys {
            content_by_lua_block {
                local n = 0
                for _, k in ipairs(ngx.shared.healthcheck:get_keys(0)) do
                    if k:find(ngx.var.arg_prefix, 1, true) == 1 then n = n + 1 end
                end
                ngx.say(n)
            }
        }
        # the way users write them: one value each, nothing after the text
        location = /json {
            content_by_lua_block {
                ngx.print(require("resty.upstream.healthcheck").status_json())
            }
        }
        location = /prom {
            content_by_lua_block {
                local hc = require "resty.upstream.healthcheck"
                ngx.print(hc.prometheus_status_page())
            }
        }
    }'''


@pytest.fixture
def dns():
    d = DnsServer().start()
    yield d
    d.stop()


def dyn_nginx(nginx_factory, dns, port, extra='', main='', copy=False, **opts):
    status, keys = free_port(), free_port()
    opts.setdefault('interval', 200)
    opts.setdefault('timeout', 500)
    opts.setdefault('fall', 2)
    opts.setdefault('rise', 2)
    opts.setdefault('valid_statuses', [200])
    upstream = '''
    upstream dyn {
        zone dyn 256k;
        server app.test:%d resolve;
    }''' % port
    extra += '\n' + dns.resolver() + '\n    resolver_timeout 2s;\n' + KEYS_SERVER % keys
    conf = hc_conf([upstream], [checker_lua('dyn', **opts)], status, workers=2,
                   extra_http=extra, main=main)
    n = nginx_factory(conf, copy=copy, wait_ports=[('127.0.0.1', status), ('127.0.0.1', keys)])
    return n, status, keys


def states(status):
    return peer_states(status)


def wait_peers(status, want, timeout=15):
    want = set(want)
    wait_for(lambda: set(states(status)) == want, timeout=timeout,
             what='the status page to list exactly %r' % sorted(want))


def proxy(status, n):
    bodies = []
    for _ in range(n):
        st, _, body = http_get('127.0.0.1', status, '/?u=dyn')
        bodies.append(body.decode() if st == 200 else st)
    return bodies


def test_a_new_peer_is_checked_within_an_interval_and_routed(nginx_factory, dns, backends):
    b1, b2 = backends(2)
    dns.set('app.test', [b1.host])
    n, status, _ = dyn_nginx(nginx_factory, dns, b1.port)
    wait_peers(status, [b1.addr])
    wait_for(lambda: b1.health > 0, what='b1 checked')

    dns.set('app.test', [b1.host, b2.host])
    t0 = time.monotonic()
    wait_for(lambda: b2.addr in states(status), timeout=10, what='b2 listed')
    listed = time.monotonic()
    wait_for(lambda: b2.health > 0, timeout=5, what='b2 checked')
    # one interval (0.2 s) after nginx added it, plus scheduling slack
    assert time.monotonic() - listed < 2.0, time.monotonic() - listed
    wait_for(lambda: b2.name in proxy(status, 4), timeout=5, what='b2 routed')
    assert states(status)[b2.addr] == 'UP'
    assert 'failed to spawn' not in n.error_log, n.error_log[-2000:]
    assert time.monotonic() - t0 < 15


def test_initial_state_down_keeps_a_new_peer_out_of_traffic_until_rise(nginx_factory, dns,
                                                                        backends):
    b1, b2 = backends(2)
    dns.set('app.test', [b1.host])
    n, status, _ = dyn_nginx(nginx_factory, dns, b1.port, initial_state='down', rise=3,
                             interval=500)
    wait_for(lambda: states(status).get(b1.addr) == 'UP', timeout=10, what='b1 up')
    dns.set('app.test', [b1.host, b2.host])
    early = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        checks_before = b2.health
        clients_before = b2.clients
        proxy(status, 1)
        if checks_before < 2 and b2.clients > clients_before:
            early.append(checks_before)
        if b2.health >= 4:
            break
    assert b2.health >= 3, b2.health
    assert early == [], 'routed to b2 after only %r passing checks' % early
    wait_for(lambda: b2.name in proxy(status, 4), timeout=5, what='b2 routed after rise')


def test_a_dead_new_peer_goes_down_after_fall_with_initial_state_up(nginx_factory, dns, backends):
    b1, b2 = backends(2)
    b2.mode, b2.status = 'status', 500
    dns.set('app.test', [b1.host])
    n, status, _ = dyn_nginx(nginx_factory, dns, b1.port)
    wait_peers(status, [b1.addr])
    dns.set('app.test', [b1.host, b2.host])
    wait_for(lambda: states(status).get(b2.addr) == 'DOWN', timeout=10, what='b2 DOWN')
    # every worker's balancer follows within the sync period (0.1 s)
    wait_for(lambda: set(proxy(status, 20)) == {b1.name}, timeout=5,
             what='20 requests in a row avoiding b2')


def test_a_dead_peer_dns_removes_and_re_adds_is_not_routed_before_a_passing_check(
        nginx_factory, dns, backends):
    b1, b2 = backends(2)
    b2.mode, b2.status = 'status', 500
    dns.set('app.test', [b1.host, b2.host])
    n, status, _ = dyn_nginx(nginx_factory, dns, b1.port)
    wait_for(lambda: states(status).get(b2.addr) == 'DOWN', timeout=10, what='b2 DOWN')
    dns.set('app.test', [b1.host])
    wait_peers(status, [b1.addr])

    dns.set('app.test', [b1.host, b2.host])
    wait_for(lambda: b2.addr in states(status), timeout=10, what='b2 back')
    b2.reset_counts()
    t_end = time.monotonic() + 2.0
    while time.monotonic() < t_end:
        proxy(status, 5)
    assert b2.clients == 0, 'a known-dead address took %d requests' % b2.clients
    assert states(status)[b2.addr] == 'DOWN'
    # it comes back once it passes `rise` checks
    b2.mode = 'ok'
    wait_for(lambda: states(status).get(b2.addr) == 'UP', timeout=10, what='b2 UP')
    wait_for(lambda: b2.name in proxy(status, 4), timeout=5, what='b2 routed')


def keys_of(keys, prefix):
    st, _, body = http_get('127.0.0.1', keys, '/keys?prefix=' + prefix)
    assert st == 200, body
    return int(body)


def test_a_removed_peer_is_forgotten_by_the_pages_and_the_shm(nginx_factory, dns, backends):
    b1, b2, b3 = backends(3)
    dns.set('app.test', [b1.host, b2.host, b3.host])
    n, status, keys = dyn_nginx(nginx_factory, dns, b1.port, forget_after=1000)
    wait_peers(status, [b1.addr, b2.addr, b3.addr])
    wait_for(lambda: b3.health > 0, what='b3 checked')
    assert keys_of(keys, 'st:dyn:p:%s' % b3.addr) == 1

    dns.set('app.test', [b1.host, b2.host])
    wait_peers(status, [b1.addr, b2.addr])
    st, _, body = http_get('127.0.0.1', keys, '/prom')
    assert b3.addr not in body.decode() and b1.addr in body.decode()
    ok, out = promtool(body)
    assert ok, out
    st, _, body = http_get('127.0.0.1', keys, '/json')
    assert b3.addr not in body.decode() and b1.addr in body.decode()
    parse_json(body)
    # its keys are deleted once forget_after passed
    wait_for(lambda: keys_of(keys, 'st:dyn:p:%s' % b3.addr) == 0
             and keys_of(keys, 'n:dyn:p:%s' % b3.addr) == 0, timeout=10,
             what="b3's keys to be forgotten")
    assert keys_of(keys, 'st:dyn:p:') == 2


def test_host_true_gives_each_peer_sni_from_its_server_line(nginx_factory, dns, tmp_path):
    """https checks with host = true: SNI and verification name come from
    the peer's server line (`app.test`), for peers DNS added."""
    from support.backends import Backend
    from support.pki import PKI
    pki = PKI(tmp_path, 'ca')
    ctx = pki.server_context('app.test')
    seen = []
    ctx.sni_callback = lambda sock, name, c: seen.append(name)
    port = free_port()
    made = [Backend('127.0.78.%d' % i, port, tls=ctx).start() for i in (1, 2)]
    try:
        dns.set('app.test', [made[0].host])
        n, status, _ = dyn_nginx(nginx_factory, dns, port, type='https', host=True,
                                 http_req=LuaExpr(r'"GET /health HTTP/1.0\r\nHost: app.test\r\n\r\n"'),
                                 extra='lua_ssl_trusted_certificate %s;' % (pki.dir / 'ca.crt'))
        wait_for(lambda: made[0].health >= 2, timeout=10, what='verified checks of the first peer')
        dns.set('app.test', [b.host for b in made])
        wait_for(lambda: made[1].health >= 2, timeout=10, what='verified checks of the new peer')
        assert set(seen) == {'app.test'}, seen
        assert states(status) == {b.addr: 'UP' for b in made}
        assert 'failed to ssl handshake' not in n.error_log, n.error_log[-2000:]
    finally:
        for b in made:
            b.stop()


def test_churn_keeps_the_shm_bounded_and_every_worker_consistent(nginx_factory, dns, backends):
    live = backends(12)
    for b in live[6:]:
        b.mode, b.status = 'status', 500
    dns.set('app.test', [b.host for b in live[:6]])
    n, status, keys = dyn_nginx(nginx_factory, dns, live[0].port, forget_after=1500,
                                interval=100, concurrency=4)
    stop = threading.Event()
    max_keys = [0]

    def churn():
        i = 0
        while not stop.is_set():
            chosen = [b.host for k, b in enumerate(live) if (k + i) % 3]
            dns.set('app.test', chosen)
            i += 1
            stop.wait(0.7)

    t = threading.Thread(target=churn, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            max_keys[0] = max(max_keys[0], keys_of(keys, 'st:dyn:p:'))
            proxy(status, 5)
    finally:
        stop.set()
        t.join()
    # every address of the pool at most once, never more
    assert max_keys[0] <= len(live), max_keys
    dns.set('app.test', [b.host for b in live[:4]] + [b.host for b in live[6:8]])
    want = {b.addr: 'UP' for b in live[:4]}
    want.update({b.addr: 'DOWN' for b in live[6:8]})
    wait_for(lambda: states(status) == want, timeout=15, what='states after churn')
    wait_for(lambda: keys_of(keys, 'st:dyn:p:') == 6, timeout=10, what='gone peers forgotten')
    # only healthy peers take traffic, in both workers
    assert set(proxy(status, 30)) <= {b.name for b in live[:4]}
    assert not re.search(r'\[(alert|emerg|crit)\]', n.error_log), n.error_log[-2000:]


def test_spawn_checker_before_the_first_resolution_and_after_a_reload(nginx_factory, dns,
                                                                       backends):
    b1, b2 = backends(2)
    b2.mode, b2.status = 'status', 500
    dns.set('app.test', [b1.host, b2.host])
    n, status, _ = dyn_nginx(nginx_factory, dns, b1.port)
    wait_for(lambda: states(status) == {b1.addr: 'UP', b2.addr: 'DOWN'}, timeout=10,
             what='b1 UP, b2 DOWN')
    n.reload()
    time.sleep(0.5)
    # the copied peers keep their states: b2 never takes traffic after the reload
    b2.reset_counts()
    for _ in range(40):
        proxy(status, 1)
    assert b2.clients == 0, b2.clients
    assert states(status) == {b1.addr: 'UP', b2.addr: 'DOWN'}


def pool(n, third=79):
    """n loopback addresses nobody listens on (checks fail fast: refused)."""
    return ['127.%d.%d.%d' % (third, 1 + i // 250, 1 + i % 250) for i in range(n)]


def test_rotating_addresses_reuse_the_shm(nginx_factory, dns, backends):
    """20 addresses replaced by 20 new ones every 0.7 s for 8 s (~240 in
    all), with a reload in the middle: the keys of removed peers are deleted
    forget_after (1 s) later, so the shm holds a few generations, never every
    address ever seen."""
    b1, = backends(1)
    addrs = pool(300)
    dns.set('app.test', [b1.host])
    n, status, keys = dyn_nginx(nginx_factory, dns, b1.port, forget_after=1000,
                                interval=200, concurrency=10)
    wait_peers(status, [b1.addr])
    peak, seen = 0, set()
    t_end = time.monotonic() + 8
    i = 0
    while time.monotonic() < t_end:
        batch = addrs[(i * 20) % 280:(i * 20) % 280 + 20]
        seen.update(batch)
        dns.set('app.test', [b1.host] + batch)
        i += 1
        if i == 5:
            n.reload()          # a HUP in the middle of the churn
        step_end = time.monotonic() + 0.7
        while time.monotonic() < step_end:
            peak = max(peak, keys_of(keys, 'st:dyn:p:'))
            time.sleep(0.05)
    assert len(seen) >= 200, len(seen)
    # live 21 plus what left within the last forget_after + a round + TTL
    assert peak <= 21 + 5 * 20, peak
    dns.set('app.test', [b1.host])
    wait_for(lambda: keys_of(keys, 'st:dyn:p:') == 1, timeout=10, what='all gone peers forgotten')
    assert states(status) == {b1.addr: 'UP'}


def worker_rss_kb(n):
    total = 0
    for pid in n.worker_pids():
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    total = max(total, int(line.split()[1]))
    return total


def test_hostile_dns_a_thousand_addresses_flapping_every_second(nginx_factory, dns, backends):
    """A name answering 1,000 addresses (over TCP: the UDP answer is
    truncated), flipping between two such sets every second, into a 256k
    zone that cannot hold them all: nginx says so and goes on, the checker
    keeps up, the shm and memory stay bounded, no crash."""
    b1, = backends(1)
    sets = [pool(1000, 79), pool(1000, 81)]
    dns.set('app.test', [b1.host] + sets[0])
    n, status, keys = dyn_nginx(nginx_factory, dns, b1.port, forget_after=1000, interval=500,
                                concurrency=50, timeout=300)
    wait_for(lambda: len(states(status)) > 100, timeout=20, what='hundreds of peers')
    rss0 = worker_rss_kb(n)
    peak = 0
    t_end = time.monotonic() + 12
    i = 0
    while time.monotonic() < t_end:
        i += 1
        dns.set('app.test', [b1.host] + sets[i % 2])
        step_end = time.monotonic() + 1.0
        while time.monotonic() < step_end:
            t0 = time.monotonic()
            st, _, _ = http_get('127.0.0.1', status, '/status', timeout=10)
            assert st == 200
            assert time.monotonic() - t0 < 5
            peak = max(peak, keys_of(keys, 'st:dyn:p:'))
            time.sleep(0.2)
    assert peak <= 3 * 1001, peak
    rss1 = worker_rss_kb(n)
    assert rss1 < rss0 + 100 * 1024, (rss0, rss1)
    assert 'memory exhausted' in n.error_log or len(states(status)) > 1000
    # nginx's own words for a full upstream zone are [crit]: nothing else
    log = re.sub(r'.*ngx_slab_alloc\(\) failed: no memory in upstream zone.*', '', n.error_log)
    assert not re.search(r'\[(alert|emerg|crit)\]|signal \d+', log), log[-2000:]
    # it settles once DNS does
    dns.set('app.test', [b1.host])
    wait_for(lambda: states(status) == {b1.addr: 'UP'}, timeout=20, what='one peer left')


def test_binary_upgrade_during_churn_keeps_a_dead_resolved_peer_down(nginx_factory, dns, backends):
    """USR2 while DNS keeps changing: the new master's shm starts empty and
    its zone is new (nothing copied): the resolved peers come back with its
    first resolution, down until its checker has seen them, and the dead
    one keeps its DOWN from the state file: never routed."""
    import os
    import signal
    b1, b2, b3 = backends(3)
    b2.mode, b2.status = 'status', 500
    dns.set('app.test', [b1.host, b2.host])
    n, status, _ = dyn_nginx(nginx_factory, dns, b1.port, main='user root;', copy=True,
                             interval=300)
    wait_for(lambda: states(status) == {b1.addr: 'UP', b2.addr: 'DOWN'}, timeout=10,
             what='b1 UP, b2 DOWN')
    stop = threading.Event()

    def churn():            # b3 comes and goes meanwhile
        i = 0
        while not stop.wait(0.5):
            i += 1
            dns.set('app.test', [b1.host, b2.host] + ([b3.host] if i % 2 else []))

    t = threading.Thread(target=churn, daemon=True)
    old_master = n.master_pid()
    t.start()
    try:
        old_workers = set(n.worker_pids())
        n.signal(signal.SIGUSR2)
        wait_for(lambda: n.master_pid() != old_master and len(n.worker_pids()) == 2,
                 timeout=15, what='the new master and its workers')
        os.kill(old_master, signal.SIGWINCH)
        wait_for(lambda: not any(os.path.exists('/proc/%d' % p) for p in old_workers),
                 timeout=15, what='old workers gone')
        b2.reset_counts()
        t_end = time.monotonic() + 3
        while time.monotonic() < t_end:
            proxy(status, 5)
        assert b2.clients == 0, b2.clients
        os.kill(old_master, signal.SIGQUIT)
        wait_for(lambda: not os.path.exists('/proc/%d' % old_master), timeout=10)
    finally:
        stop.set()
        t.join()
        if os.path.exists('/proc/%d' % old_master):
            os.kill(old_master, signal.SIGQUIT)    # the factory knows the new master only
            wait_for(lambda: not os.path.exists('/proc/%d' % old_master), timeout=10,
                     what='the old master to quit')
    assert states(status).get(b2.addr) == 'DOWN'
    assert states(status).get(b1.addr) == 'UP'


def test_passive_checks_match_a_peer_dns_added_by_address(nginx_factory, dns, backends):
    """The C log handler records a failed attempt with its address, and the
    checker finds a peer DNS added by that address (issue 29): the new peer
    is DOWN after its first failing live request, long before the active
    checks (interval 4 s, fall 2) could say so."""
    b1, b2 = backends(2, scope='all')
    dns.set('app.test', [b1.host])
    n, status, _ = dyn_nginx(nginx_factory, dns, b1.port, interval=4000,
                             passive=LuaExpr('{fall = 1, statuses = {503}}'))
    wait_for(lambda: states(status).get(b1.addr) == 'UP', timeout=10, what='b1 up')
    b2.mode, b2.status = 'status', 503
    dns.set('app.test', [b1.host, b2.host])
    wait_for(lambda: states(status).get(b2.addr) == 'UP', timeout=10, what='b2 listed, up')
    deadline = time.monotonic() + 3
    while states(status).get(b2.addr) != 'DOWN':
        assert time.monotonic() < deadline, n.error_log[-2000:]
        proxy(status, 1)
    assert 'peer %s is turned down after 1 failure(s) (upstream "dyn"): live request to %s ' \
        'failed: status 503' % (b2.addr, b2.addr) in n.error_log
