"""Multi-worker behaviour: one round per interval for the whole instance, every
worker's balancer follows the state, a killed worker's rounds are taken over,
and DOWN peers stay DOWN across HUP reload and binary upgrade."""
import os
import re
import signal
import time

import pytest

from conftest import free_port, http_get, wait_for
from hcutil import hc_conf, local_views, wait_state
from support.confs import checker_lua, upstream_block
from support.probes import peer_states
from support.hc_keys import hc_key

WORKERS = 4


def conf_for(addrs, port, interval=200, timeout=300, fall=2, rise=2, main='', workers=WORKERS,
             **kw):
    return hc_conf([upstream_block('foo', addrs)],
                   [checker_lua('foo', interval=interval, timeout=timeout, fall=fall, rise=rise,
                                valid_statuses=[200], **kw)],
                   port, workers=workers, main=main)


def shm_get(port, key):
    return http_get('127.0.0.1', port, '/shm?key=' + key)[2].decode().strip()


def test_one_round_per_interval_for_the_instance(nginx_factory, backends):
    b = backends(2)
    port = free_port()
    nginx_factory(conf_for([x.addr for x in b], port, interval=200), workers=WORKERS,
                  wait_ports=[('127.0.0.1', port)])
    wait_for(lambda: b[0].health >= 2, what='first rounds')
    b[0].reset_counts()
    b[1].reset_counts()
    time.sleep(3.0)
    # one round per 200 ms => ~15 checks per peer; per-worker rounds would give ~60
    for x in b:
        assert 10 <= x.health <= 19, [y.health for y in b]
        gaps = [t2 - t1 for t1, t2 in zip(x.health_times, x.health_times[1:])]
        assert min(gaps) > 0.15, gaps        # never two rounds back to back


def test_every_worker_follows_the_state(nginx_factory, backends):
    b = backends(3)
    port = free_port()
    nginx_factory(conf_for([x.addr for x in b], port, interval=100), workers=WORKERS,
                  wait_ports=[('127.0.0.1', port)])
    wait_for(lambda: b[1].health >= 2)
    b[1].status, b[1].mode = 500, 'status'
    wait_state(port, b[1].addr, 'DOWN')
    t_down = time.monotonic()
    views = local_views(port, 'foo', WORKERS)
    assert len(views) == WORKERS
    # one interval for the other workers to sync (+ slack for our polling)
    deadline = t_down + 0.1 + 0.4

    def all_down():
        v = local_views(port, 'foo', WORKERS)
        return all(w[b[1].addr] == 'down' and w[b[0].addr] == 'up' for w in v.values())
    wait_for(lambda: all_down() or time.monotonic() > deadline + 5, timeout=10)
    assert all_down() and time.monotonic() <= deadline + 0.5, 'workers did not sync in time'

    b[1].mode = 'ok'
    wait_state(port, b[1].addr, 'UP')
    wait_for(lambda: all(w[b[1].addr] == 'up'
                         for w in local_views(port, 'foo', WORKERS).values()), timeout=2)


def test_down_reaches_every_worker_before_the_round_ends(nginx_factory, backends):
    """A DOWN decision is published when it is made, not when the round ends:
    a peer that holds every check for the whole timeout (6 s) must not hold
    back the other workers' balancers (lualib/README.md: one sync period,
    0.1 s, plus scheduling delay)."""
    b = backends(3)                      # checked in order: b0, victim b1, slow b2
    port = free_port()
    nginx_factory(conf_for([x.addr for x in b], port, interval=100, timeout=6000, fall=1),
                  workers=WORKERS, wait_ports=[('127.0.0.1', port)])
    wait_for(lambda: b[2].health >= 2, what='first rounds')
    b[2].delay, b[2].mode = 30, 'slow'
    wait_state(port, b[2].addr, 'DOWN', timeout=15)
    b[1].status, b[1].mode = 500, 'status'
    wait_state(port, b[1].addr, 'DOWN', timeout=15)
    t_down = time.monotonic()

    def all_down():
        v = local_views(port, 'foo', WORKERS)
        return all(w[b[1].addr] == 'down' for w in v.values())
    wait_for(all_down, timeout=10, interval=0.01, what='every worker applied the DOWN')
    took = time.monotonic() - t_down
    # the round still waits for b2 for seconds; generous for a busy machine
    assert took < 2.0, took


def test_killed_worker_rounds_are_taken_over(nginx_factory, backends):
    b = backends(2)
    b[1].mode, b[1].delay = 'slow', 0.2       # long rounds: likely killed mid-round
    port = free_port()
    n = nginx_factory(conf_for([x.addr for x in b], port, interval=100, timeout=400),
                      workers=WORKERS, wait_ports=[('127.0.0.1', port)])
    wait_for(lambda: b[0].health >= 3)
    runner = int(wait_for(lambda: shm_get(port, hc_key('round_lock', 'foo')).isdigit()
                          and shm_get(port, hc_key('round_lock', 'foo')), timeout=5))
    assert runner in n.worker_pids()
    os.kill(runner, signal.SIGTERM)            # abrupt: the lock is not released
    t0 = time.monotonic()
    wait_for(lambda: runner not in n.worker_pids(), timeout=5)
    seen = b[0].health
    # lock ttl = 4 x timeout + 1 s = 2.6 s, then the next interval
    wait_for(lambda: b[0].health >= seen + 3, timeout=8, what='rounds to resume')
    assert time.monotonic() - t0 < 2.6 + 0.1 + 2.0
    def holder():
        for key in (hc_key('round_lock', 'foo'), hc_key('next_round', 'foo')):
            v = shm_get(port, key)
            if v.isdigit():
                return int(v)
    new_runner = wait_for(holder, timeout=3)
    assert new_runner != runner and new_runner in n.worker_pids()
    # still one round at a time: (interval + ~0.2 s round) => at most ~3.5 per second
    b[0].reset_counts()
    time.sleep(2)
    assert b[0].health <= 8, b[0].health


def test_reload_keeps_down_peers_down_by_address(nginx_factory, backends):
    b = backends(4)
    port = free_port()
    n = nginx_factory(conf_for([x.addr for x in b[:3]], port, interval=150, workers=2),
                      workers=2, wait_ports=[('127.0.0.1', port)])
    b[1].status, b[1].mode = 500, 'status'     # health fails, clients would get 200
    wait_state(port, b[1].addr, 'DOWN')
    assert shm_get(port, hc_key('state', 'foo', 'primary', b[2].addr)) == '0'

    # new config: b1 moves to the front, b2 removed, b3 added (the reference keys
    # state by position and would mark the wrong peer down)
    (n.prefix / 'conf' / 'nginx.conf').write_text(
        conf_for([b[1].addr, b[0].addr, b[3].addr], port, interval=150, workers=2))
    before = b[1].clients
    n.reload()
    views = local_views(port, 'foo', 2)
    for v in views.values():
        assert v == {b[1].addr: 'down', b[0].addr: 'up', b[3].addr: 'up'}, views
    for _ in range(40):
        st, _, body = http_get('127.0.0.1', port, '/?u=foo')
        assert st == 200 and body.decode() != b[1].name
    assert b[1].clients == before
    assert peer_states(port) == {b[1].addr: 'DOWN', b[0].addr: 'UP', b[3].addr: 'UP'}
    # removed peers are forgotten
    assert shm_get(port, hc_key('state', 'foo', 'primary', b[2].addr)) == 'nil'
    time.sleep(0.5)
    assert 'is turned up' not in n.error_log
    b[1].mode = 'ok'
    wait_state(port, b[1].addr, 'UP')


def test_binary_upgrade_keeps_down_peers_down(nginx_factory, backends):
    b = backends(2)
    port = free_port()
    # user root: the workers save the states under logs/ (pytest dirs are 0700)
    conf = conf_for([x.addr for x in b], port, interval=150, workers=2, main='user root;')
    n = nginx_factory(conf, workers=2, copy=True, wait_ports=[('127.0.0.1', port)])
    b[1].status, b[1].mode = 500, 'status'
    wait_state(port, b[1].addr, 'DOWN')
    state_file = n.prefix / 'logs' / 'healthcheck.healthcheck.foo.state'
    wait_for(state_file.exists, timeout=5)
    assert '1 p %s' % b[1].addr in state_file.read_text()

    old_master = n.master_pid()
    old_workers = set(n.worker_pids())
    n.signal(signal.SIGUSR2)
    oldbin = n.prefix / 'logs' / 'nginx.pid.oldbin'
    wait_for(oldbin.exists, timeout=10)
    wait_for(lambda: n.master_pid() != old_master and len(n.worker_pids()) == 2, timeout=10)
    os.kill(old_master, signal.SIGWINCH)       # old workers leave; only new ones serve
    wait_for(lambda: not any(os.path.exists('/proc/%d' % p) for p in old_workers), timeout=10)

    before = b[1].clients
    views = local_views(port, 'foo', 2)
    assert set(views) == set(n.worker_pids())
    for v in views.values():
        assert v[b[1].addr] == 'down', views
    for _ in range(30):
        assert http_get('127.0.0.1', port, '/?u=foo')[0] == 200
    assert b[1].clients == before
    os.kill(old_master, signal.SIGQUIT)
    wait_for(lambda: not os.path.exists('/proc/%d' % old_master), timeout=10)
    assert peer_states(port)[b[1].addr] == 'DOWN'
    new_log = n.error_log.split('SIGUSR2', 1)[1] if 'SIGUSR2' in n.error_log else n.error_log
    assert 'is turned up' not in new_log


def test_state_file_warning_is_logged_once(nginx_factory, backends):
    """Issue 27, item 13: started as root (workers as nobody), the workers
    cannot write the state file under the root-owned logs/.  The warning was
    logged once per worker and upstream, so again by every new worker after
    each reload at its first state change; now once per upstream for the
    life of the shm, whichever worker and reload meets the problem."""
    if os.geteuid() != 0:
        pytest.skip('needs root: the workers run as nobody and cannot write logs/')
    b = backends(2)
    port = free_port()
    n = nginx_factory(conf_for([x.addr for x in b], port, interval=100, fall=1, rise=1, workers=2),
                      workers=2, wait_ports=[('127.0.0.1', port)])
    warning = re.compile(r'\[warn\] .*healthcheck: cannot save peer states of upstream "foo" to %s: '
                         r'%s\.tmp\d+: Permission denied \(they will not survive a new master: '
                         r"let the workers' user write there, or set the state_file option\)"
                         % ((re.escape(str(n.prefix / 'logs' / 'healthcheck.healthcheck.foo.state')),) * 2))
    for flip in range(3):
        b[1].status, b[1].mode = 500, 'status'
        wait_state(port, b[1].addr, 'DOWN')
        b[1].mode = 'ok'
        wait_state(port, b[1].addr, 'UP')
        wait_for(lambda: warning.search(n.error_log), what='the warning')
        n.reload()                      # new workers: they meet the problem anew
    lines = [l for l in n.error_log.splitlines() if 'cannot save peer states' in l]
    assert len(lines) == 1, lines
    assert warning.search(lines[0]), lines[0]
