"""Fault cases for the whole stack (health checker + traffic status + proxy):
a worker SIGKILLed mid-round, a healthcheck shm too small for the upstreams,
a traffic-status zone too small, a reload that changes the peer list under
load, and a binary upgrade (USR2 + QUIT) under load."""
import json
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import Nginx, free_port, http_get, make_prefix, wait_for
from faultutil import backends, checker, shm_get, stack_conf, vts_json
from soakutil import bad_log_lines, workers_settled, wrk_result, wrk_start
from support.probes import peer_states, promtool
from support.hc_keys import hc_key
from support.net import process_gone


def load(port, seconds, host='load.test', conns=4):
    return wrk_start('http://127.0.0.1:%d/' % port, seconds, conns, host=host)


def served_by(port, n=20):
    seen = set()
    for _ in range(n):
        st, h, _ = http_get('127.0.0.1', port, '/')
        assert st == 200, st
        seen.add(h['x-backend'])
    return seen


def routed_around(port, backend, n=20):
    """n requests in a row, all 200, none answered by `backend`."""
    for _ in range(n):
        st, h, _ = http_get('127.0.0.1', port, '/')
        if st != 200 or h.get('x-backend') == backend:
            return False
    return True


def test_worker_sigkilled_mid_round(tmp_path):
    b = backends(3)
    b[2].mode, b[2].delay = 'slow', 0.3    # rounds take >= 0.3 s: the lock is held long
    port = free_port()
    addrs = ['%s:%d' % (x.host, x.port) for x in b]
    n = Nginx(make_prefix(tmp_path / 'n', stack_conf(
        port, {'foo': addrs}, [checker('foo', interval=100, timeout=500)])))
    try:
        n.start(workers=2, wait_ports=[('127.0.0.1', port)])
        wait_for(lambda: b[0].total('/health') >= 3, what='first rounds')
        w = load(port, 8)
        time.sleep(1)
        before = vts_json(port)['serverZones']['load.test']['requestCounter']
        assert before > 0
        # the worker holding the round lock while a probe of the slow peer is
        # in flight: killed mid-round, holding the lock (and maybe the shm mutex)
        victim = int(wait_for(lambda: shm_get(port, hc_key('round_lock', 'foo')).isdigit()
                              and shm_get(port, hc_key('round_lock', 'foo')), timeout=5,
                              what='round lock'))
        assert victim in n.worker_pids()
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(lambda: victim not in n.worker_pids() and len(n.worker_pids()) == 2,
                 timeout=10, what='worker respawned')
        seen = b[0].total('/health')
        # lock ttl 4 x 0.5 + 1 = 3 s, then the next interval
        wait_for(lambda: b[0].total('/health') >= seen + 3, timeout=10, what='rounds to resume')
        assert time.monotonic() - t0 < 3 + 0.1 + 3
        r = wrk_result(w, timeout=60)
        assert r['requests'] > 0
        # counters survived the crash (shared memory) and kept counting
        after = vts_json(port)['serverZones']['load.test']['requestCounter']
        assert after >= before + 1 and after >= r['requests'] - 4 - r['socket_errors']
        # the checker still works: a backend failure is detected and routed around
        b[0].status, b[0].mode = 500, 'status'
        wait_for(lambda: peer_states(port).get(addrs[0]) == 'DOWN', timeout=10, what='DOWN')
        # every worker applies the DOWN within one sync period (0.1 s) plus
        # scheduling delay (lualib/README.md): wait for that, generously, on a
        # busy machine, then no client request may reach b0 any more
        wait_for(lambda: routed_around(port, 'b0'), timeout=5, what='every worker routes around b0')
        assert 'b0' not in served_by(port)
        b[0].mode = 'ok'
        wait_for(lambda: peer_states(port).get(addrs[0]) == 'UP', timeout=10, what='UP')
        text = http_get('127.0.0.1', port, '/metrics')[2].decode()
        ok, why = promtool(text)
        assert ok, why
    finally:
        n.stop()
        for x in b:
            x.stop()
    log = n.error_log
    assert re.search(r'worker process %d exited on signal 9' % victim, log)
    # the only acceptable [alert]s: the kill itself, and nginx freeing a shm
    # mutex the killed worker held
    bad = bad_log_lines(log, allow=(r'exited on signal 9',
                                    r'shared memory zone "\S+" was locked by %d' % victim))
    assert not bad, '\n'.join(bad)


def test_healthcheck_shm_too_small(nginx_factory, tmp_path):
    """300 peers need ~120 KB of healthcheck shm; give it 12 KB.  The checker
    that does not fit says so clearly; nginx serves, nothing crashes, and a
    small upstream's checker spawned before it keeps working."""
    b = backends(2)
    port = free_port()
    small = ['%s:%d' % (x.host, x.port) for x in b]
    big = ['127.0.32.%d:%d' % (1 + i % 250, 1000 + i) for i in range(300)]
    conf = stack_conf(port, {'foo': small, 'big': big},
                      [checker('foo', interval=100), checker('big', interval=100)], shm='12k')
    n = nginx_factory(conf, workers=2, wait_ports=[('127.0.0.1', port)])
    try:
        wait_for(lambda: 'failed to spawn health checker for big' in n.error_log, timeout=10,
                 what='a clear error')
        line = [l for l in n.error_log.splitlines() if 'failed to spawn health checker for big' in l][0]
        assert 'no memory' in line, line
        assert served_by(port) == {'b0', 'b1'}
        # foo's checker still detects failures and recoveries
        b[1].status, b[1].mode = 500, 'status'
        wait_for(lambda: peer_states(port).get(small[1]) == 'DOWN', timeout=10, what='DOWN')
        wait_for(lambda: routed_around(port, 'b1'), timeout=5, what='every worker routes around b1')
        assert served_by(port) == {'b0'}
        b[1].mode = 'ok'
        wait_for(lambda: peer_states(port).get(small[1]) == 'UP', timeout=10, what='UP')
        # status page and /metrics stay usable
        body = http_get('127.0.0.1', port, '/status')[2].decode()
        assert 'Upstream big' in body
        ok, why = promtool(http_get('127.0.0.1', port, '/metrics')[2].decode())
        assert ok, why
    finally:
        for x in b:
            x.stop()
    # nginx's own slab allocator message is expected; nothing else
    bad = bad_log_lines(n.error_log, allow=(r'ngx_slab_alloc\(\) failed: no memory',))
    assert not bad, '\n'.join(bad)


def test_traffic_status_zone_too_small(nginx_factory, tmp_path):
    b = backends(1)
    port = free_port()
    conf = stack_conf(port, {'foo': ['%s:%d' % (b[0].host, b[0].port)]}, [],
                      vts_zone='shared:vts:32k')
    n = nginx_factory(conf, workers=2, wait_ports=[('127.0.0.1', port)])
    try:
        hosts = ['h%03d.example' % i for i in range(200)]
        for h in hosts:
            st, _, _ = http_get('127.0.0.1', port, '/', headers={'Host': h})
            assert st == 200
        data = vts_json(port)
        zone = data['sharedZones']
        assert zone['droppedNodes']['zoneFull'] > 0, zone
        assert zone['usedSize'] <= zone['maxSize']
        stored = [h for h in data['serverZones'] if h in hosts]
        assert 0 < len(stored) < len(hosts)
        # every request still counts in the sum key
        assert data['serverZones']['*']['requestCounter'] >= len(hosts)
        text = http_get('127.0.0.1', port, '/metrics')[2].decode()
        assert re.search(r'nginx_vts_main_shm_dropped_nodes_total\{[^}]*reason="zone_full"[^}]*\} [1-9]',
                         text), text[-2000:]
        ok, why = promtool(text)
        assert ok, why
        # and the stored entries keep counting
        h = stored[0]
        c0 = data['serverZones'][h]['requestCounter']
        http_get('127.0.0.1', port, '/', headers={'Host': h})
        assert vts_json(port)['serverZones'][h]['requestCounter'] == c0 + 1
    finally:
        b[0].stop()
    bad = bad_log_lines(n.error_log)
    assert not bad, '\n'.join(bad)


def test_reload_changing_the_peer_list_under_load(nginx_factory, tmp_path):
    b = backends(4)
    port = free_port()
    a = ['%s:%d' % (x.host, x.port) for x in b]
    n = nginx_factory(stack_conf(port, {'foo': a[:3]}, [checker('foo')]), workers=2,
                      wait_ports=[('127.0.0.1', port)])
    try:
        b[1].status, b[1].mode = 500, 'status'     # fails health checks and would fail clients
        wait_for(lambda: peer_states(port).get(a[1]) == 'DOWN', timeout=10, what='DOWN')
        wait_for(lambda: routed_around(port, 'b1'), timeout=5, what='every worker applied the DOWN')
        w = load(port, 6)
        time.sleep(2)
        # new list: b0 removed, b1 (DOWN) moves first, b3 added
        (n.prefix / 'conf' / 'nginx.conf').write_text(
            stack_conf(port, {'foo': [a[1], a[2], a[3]]}, [checker('foo')]))
        n.reload()
        b0_after_reload = b[0].total()
        r = wrk_result(w, timeout=60)
        # zero client errors: the DOWN peer stayed DOWN through the reload
        assert r['non2xx'] == 0 and r['socket_errors'] == 0, r['out']
        assert b[0].total() == b0_after_reload      # removed peer: no traffic
        assert b[3].total('/') > 0                  # new peer: traffic
        assert peer_states(port) == {a[1]: 'DOWN', a[2]: 'UP', a[3]: 'UP'}
        assert shm_get(port, hc_key('state', 'foo', 'primary', a[0])) == 'nil'
        peers = {p['server']: p for p in vts_json(port)['upstreamZones']['foo']}
        # the peer the reload removed stays listed, marked removed, with its counts
        assert {k for k, p in peers.items() if not p.get('removed')} == {a[1], a[2], a[3]}
        assert peers[a[0]]['removed'] is True and peers[a[0]]['requestCounter'] > 0
        wait_for(lambda: all(p['down'] == (p['server'] == a[1])
                             for p in vts_json(port)['upstreamZones']['foo']
                             if not p.get('removed')),
                 timeout=3, what='traffic status shows the states')
        b[1].mode = 'ok'
        wait_for(lambda: peer_states(port).get(a[1]) == 'UP', timeout=10, what='UP')
    finally:
        for x in b:
            x.stop()
    bad = bad_log_lines(n.error_log)
    assert not bad, '\n'.join(bad)


def test_binary_upgrade_under_load(nginx_factory, tmp_path):
    b = backends(2)
    port = free_port()
    a = ['%s:%d' % (x.host, x.port) for x in b]
    # user root: the workers can write the state file under logs/ for the new master
    conf = stack_conf(port, {'foo': a}, [checker('foo')], main='user root;')
    n = nginx_factory(conf, workers=2, copy=True, wait_ports=[('127.0.0.1', port)])
    old = n.master_pid()
    try:
        b[1].status, b[1].mode = 500, 'status'
        wait_for(lambda: peer_states(port).get(a[1]) == 'DOWN', timeout=10, what='DOWN')
        wait_for(lambda: routed_around(port, 'b1'), timeout=5, what='every worker applied the DOWN')
        w = load(port, 6)
        time.sleep(1.5)
        n.signal(signal.SIGUSR2)
        oldbin = n.prefix / 'logs' / 'nginx.pid.oldbin'
        wait_for(lambda: oldbin.exists() and n.master_pid() not in (None, old), timeout=10,
                 what='new master')
        new = n.master_pid()
        wait_for(lambda: len(n.worker_pids()) == 2, timeout=10, what='new workers')
        # the new master knows the DOWN peer at once (state file), before any round
        assert peer_states(port) == {a[0]: 'UP', a[1]: 'DOWN'}
        time.sleep(1)
        os.kill(old, signal.SIGQUIT)

        wait_for(lambda: process_gone(old), timeout=15, what='old master to exit')
        r = wrk_result(w, timeout=60)
        assert r['requests'] > 0
        assert r['non2xx'] == 0 and r['socket_errors'] == 0, r['out']
        assert not oldbin.exists()
        assert n.master_pid() == new
        assert workers_settled(n, 2)
        st, h, _ = http_get('127.0.0.1', port, '/')
        assert st == 200 and h['x-backend'] == 'b0'
        # the new master's zone counts (the log phase counts after the response
        # is sent: the JSON may be served first, by the other worker too)
        wait_for(lambda: vts_json(port)['serverZones'].get('127.0.0.1', {})
                 .get('requestCounter', 0) >= 1, timeout=5, what='the new zone counting')
        b[1].mode = 'ok'
        wait_for(lambda: peer_states(port).get(a[1]) == 'UP', timeout=10, what='UP')
    finally:
        for x in b:
            x.stop()
    bad = bad_log_lines(n.error_log)
    assert not bad, '\n'.join(bad)
