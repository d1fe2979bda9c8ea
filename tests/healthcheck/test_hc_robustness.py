"""Regression tests found by the reliability suite:
1. frequent HUP reloads must not starve the rounds (a new worker retries when
   the previous round's marker expires; an exiting worker abandons its round
   and frees the lock);
2. every worker's balancer follows a state change well within one interval
   (per-worker version sync, not the interval timer);
3. a checker that does not fit in the shm fails cleanly and never evicts
   another upstream's state."""
import re
import signal
import threading
import time

from conftest import free_port, http_get, wait_for
from hcutil import hc_conf, local_views
from support.confs import checker_lua, upstream_block
from support.probes import peer_states
from support.hc_keys import hc_key


def shm_get(port, key):
    return http_get('127.0.0.1', port, '/shm?key=' + key)[2].decode().strip()


def quiet(fn, default=None):
    """fn() or default when nginx drops the connection during a reload."""
    try:
        return fn()
    except (OSError, ValueError, IndexError):
        return default


class Reloader:
    """Sends SIGHUP to the master every `every` seconds until stopped."""

    def __init__(self, n, every):
        self.n, self.every = n, every
        self.stop_ev = threading.Event()
        self.count = 0
        self.times = []
        self.t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop_ev.wait(self.every):
            self.n.signal(signal.SIGHUP)
            self.times.append(time.monotonic())
            self.count += 1

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        self.t.join(5)


def test_frequent_reloads_do_not_starve_the_rounds(nginx_factory, backends):
    """HUP every 0.75 x interval: the rounds keep their pace (a new worker
    waits for the previous round's marker to expire, not a whole interval),
    and a peer killed meanwhile is still detected in time."""
    interval, timeout, fall = 0.5, 0.3, 2
    b = backends(2)
    port = free_port()
    conf = hc_conf([upstream_block('foo', [x.addr for x in b])],
                   [checker_lua('foo', interval=int(interval * 1000),
                                timeout=int(timeout * 1000), fall=fall, rise=2,
                                valid_statuses=[200])],
                   port, workers=2)
    n = nginx_factory(conf, workers=2, wait_ports=[('127.0.0.1', port)])
    wait_for(lambda: b[0].health >= 2, what='first rounds')

    window = 8 * interval
    with Reloader(n, 0.75 * interval) as r:
        time.sleep(interval)                   # let the reloads start
        b[0].reset_counts()
        t0 = time.monotonic()
        wait_for(lambda: time.monotonic() - t0 >= window, timeout=window + 5,
                 interval=0.05)
        times = list(b[0].health_times)
        reloads = r.count

        # a peer killed while reloading is still detected in time
        b[1].stop()
        t_kill = time.monotonic()
        bound = fall * interval + timeout + 2 * interval
        wait_for(lambda: quiet(lambda: peer_states(port).get(b[1].addr)) == 'DOWN',
                 timeout=bound + 5, interval=0.05, what='killed peer DOWN')
        took = time.monotonic() - t_kill

    expected = window / interval
    gaps = [y - x for x, y in zip(times, times[1:])]
    assert reloads >= 8, reloads
    assert len(times) >= 0.7 * expected, (len(times), expected, reloads)
    # waiting a whole interval after a reload gives gaps up to 1.75 intervals
    # after most reloads; a busy machine may run one timer late now and then
    # (issue 19), which is no starvation: at most one gap in ten may be slow
    slow = [g for g in gaps if g > interval + 0.25]
    assert len(slow) <= max(1, len(gaps) // 10), gaps
    assert max(gaps) <= 2 * interval, gaps
    # still one round at a time; the only back-to-back rounds are those after
    # a reload abandoned a round whose probe result the exiting worker dropped
    # (the new worker re-runs it at once: see test_round_interrupted_by_reload)
    assert sum(g < 0.5 * interval for g in gaps) <= reloads // 2, gaps
    assert took <= bound + 0.5, (took, bound)
    n.reload()                                 # still healthy afterwards
    assert peer_states(port)[b[1].addr] == 'DOWN'
    assert peer_states(port)[b[0].addr] == 'UP'


def test_round_interrupted_by_reload_does_not_block_the_next(nginx_factory, backends):
    """A reload in the middle of a round: the old worker finishes its probe in
    flight (its result dropped), then abandons the round without marking it
    done, so a new worker finishes the round at once (the dropped probe
    again) instead of a whole interval later."""
    # the slow probe lasts long enough for the reload to land inside it even
    # when starting new workers is slow (a busy machine, the ASan build)
    interval, delay = 1.0, 2.0
    b = backends(2)
    b[1].mode, b[1].delay = 'slow', delay      # second in the round, slow
    port = free_port()
    conf = hc_conf([upstream_block('foo', [x.addr for x in b])],
                   [checker_lua('foo', interval=int(interval * 1000), timeout=4000,
                                fall=2, rise=2, valid_statuses=[200])],
                   port, workers=2)
    n = nginx_factory(conf, workers=2, wait_ports=[('127.0.0.1', port)])
    seen = wait_for(lambda: b[1].health >= 1 and b[1].health, what='first slow probe')
    # wait for the next round's slow probe, then reload while it is in flight
    wait_for(lambda: b[1].health > seen, timeout=interval + delay + 5,
             interval=0.01, what='slow probe')
    t_slow = b[1].health_times[-1]
    before = b[1].health
    n.signal(signal.SIGHUP)
    assert time.monotonic() - t_slow < delay - 0.2
    wait_for(lambda: b[1].health > before, timeout=interval + delay + 5,
             interval=0.01, what='the dropped probe again')
    t_next = b[1].health_times[before]
    # the probe in flight ends at t_slow + delay; a marked round would wait
    # another full interval
    assert t_next - (t_slow + delay) < 0.5 * interval, t_next - t_slow
    n.reload()
    assert peer_states(port) == {b[0].addr: 'UP', b[1].addr: 'UP'}


def test_every_worker_applies_changes_quickly(nginx_factory, backends):
    """interval 2 s, 4 workers: the balancer of every worker follows a state
    change within ~0.7 s of the status page showing it."""
    workers = 4
    b = backends(2)
    port = free_port()
    conf = hc_conf([upstream_block('foo', [x.addr for x in b])],
                   [checker_lua('foo', interval=2000, timeout=500, fall=1, rise=1,
                                valid_statuses=[200])],
                   port, workers=workers)
    nginx_factory(conf, workers=workers, wait_ports=[('127.0.0.1', port)])
    wait_for(lambda: b[1].health >= 1, what='first round')
    local_views(port, 'foo', workers)

    def all_workers(state):
        v = local_views(port, 'foo', workers, timeout=5)
        return all(w[b[1].addr] == state and w[b[0].addr] == 'up' for w in v.values())

    for mode, shown, local in (('status', 'DOWN', 'down'), ('ok', 'UP', 'up')):
        b[1].status, b[1].mode = 500, mode
        wait_for(lambda: peer_states(port).get(b[1].addr) == shown, timeout=10,
                 interval=0.01, what='%s on the status page' % shown)
        t_shown = time.monotonic()
        wait_for(lambda: all_workers(local), timeout=5, interval=0.01,
                 what='every worker to apply %s' % shown)
        lag = time.monotonic() - t_shown
        # 0.7 s plus time to collect one answer from each of the 4 workers
        assert lag <= 0.7 + 0.3, (shown, lag)


KEYS_SERVER = r'''
    server {
        listen 127.0.0.1:%d;
        location = /keys {
            content_by_lua_block {
                local n = 0
                for _, k in ipairs(ngx.shared.healthcheck:get_keys(0)) do
                    if k:find(":big", 1, true) then n = n + 1 end
                end
                ngx.say(n)
            }
        }
    }
'''


def test_checker_that_does_not_fit_fails_cleanly_and_evicts_nothing(nginx_factory,
                                                                     backends):
    b = backends(2)
    port, kport = free_port(), free_port()
    small = [x.addr for x in b]
    big = ['127.0.32.%d:%d' % (1 + i % 250, 1000 + i) for i in range(300)]
    foo_checker = checker_lua('foo', interval=100, timeout=300, fall=2, rise=2,
                              valid_statuses=[200])
    big_checker = checker_lua('big', interval=100, timeout=300, fall=2, rise=2,
                              valid_statuses=[200])

    def conf(with_big):
        ups = [upstream_block('foo', small)]
        chk = [foo_checker]
        if with_big:
            ups.append(upstream_block('big', big))
            chk.append(big_checker)
        return hc_conf(ups, chk, port, workers=2, shm_size='12k',
                       extra_http=KEYS_SERVER % kport)

    n = nginx_factory(conf(False), workers=2, wait_ports=[('127.0.0.1', port)])
    b[1].status, b[1].mode = 500, 'status'
    wait_for(lambda: peer_states(port).get(small[1]) == 'DOWN', what='DOWN')
    assert shm_get(port, hc_key('state', 'foo', 'primary', small[1])) == '1'

    # the same shm (same size: kept across HUP) now also has to hold `big`
    (n.prefix / 'conf' / 'nginx.conf').write_text(conf(True))
    n.reload()
    wait_for(lambda: len(re.findall(r'failed to spawn health checker for big: .*no memory',
                                    n.error_log)) >= 2,
             timeout=10, what='both new workers to report "no memory"')
    for line in n.error_log.splitlines():
        if 'failed to spawn health checker' in line:
            assert 'no memory' in line, line

    # nothing of `big` left behind
    assert http_get('127.0.0.1', kport, '/keys')[2].decode().strip() == '0'
    for key in [hc_key(kind, 'big') for kind in ('peer_list', 'version', 'round_lock', 'next_round')] \
            + [hc_key('state', 'big', 'primary', big[0])]:
        assert shm_get(port, key) == 'nil', key

    # foo's DOWN state survived and is enforced by every worker
    assert shm_get(port, hc_key('state', 'foo', 'primary', small[1])) == '1'
    assert peer_states(port)[small[1]] == 'DOWN'
    for v in local_views(port, 'foo', 2).values():
        assert v == {small[0]: 'up', small[1]: 'down'}, v
    before = b[1].clients
    for _ in range(20):
        st, _, body = http_get('127.0.0.1', port, '/?u=foo')
        assert st == 200 and body.decode() == b[0].name
    assert b[1].clients == before

    # and foo's checker keeps working in the full shm
    b[1].mode = 'ok'
    wait_for(lambda: peer_states(port).get(small[1]) == 'UP', timeout=10, what='UP')
    b[0].status, b[0].mode = 500, 'status'
    wait_for(lambda: peer_states(port).get(small[0]) == 'DOWN', timeout=10, what='DOWN')
    assert 'healthcheck: failed to' not in n.error_log.split('failed to spawn', 1)[0]


def test_a_hup_storm_neither_multiplies_nor_starves_checks(nginx_factory, backends):
    """Rounds longer than the HUP period (issue 26, item 12): each HUP cut
    the round, and the new worker started a fresh one at the first peer, so
    the first peers were checked at every HUP and the last ones rarely.  Now
    the new worker finishes the cut round (the peers it did not reach), so
    every peer is checked at the same rate through the storm."""
    b = backends(6)
    for x in b[4:]:
        x.mode, x.delay = 'slow', 0.8          # last in the round, slow
    port = free_port()
    conf = hc_conf([upstream_block('foo', [x.addr for x in b])],
                   [checker_lua('foo', interval=300, timeout=3000, fall=2, rise=1,
                                concurrency=1, valid_statuses=[200])],
                   port, workers=2)
    n = nginx_factory(conf, workers=2, wait_ports=[('127.0.0.1', port)])
    wait_for(lambda: b[5].health >= 1, timeout=15, what='a whole first round')
    for x in b:
        x.reset_counts()
    with Reloader(n, 0.5) as r:
        time.sleep(8)
        reloads = r.count
    first, last = b[0].health, b[5].health
    assert reloads >= 8, reloads
    assert last >= 2, (first, last)
    assert first <= last + 2, ('the first peer checked %d times, the last %d' % (first, last))
