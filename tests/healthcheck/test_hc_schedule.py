"""When peers are checked: `jitter` spreads a round's checks over the jitter
window (measured at the backends), `interval_unhealthy` checks DOWN peers at
their own rate, `initial_state = "down"` keeps peers new to the checker (at
start, added by a reload) DOWN until `rise` successes."""
import time

from conftest import free_port, wait_for
from hcutil import hc_conf, wait_state
from support.confs import checker_lua, upstream_block
from support.probes import peer_states


def start(nginx_factory, addrs, name='n', **opts):
    port = free_port()
    for k, v in (('interval', 100), ('timeout', 500), ('fall', 1), ('rise', 1)):
        opts.setdefault(k, v)
    conf = hc_conf([upstream_block('foo', addrs)], [checker_lua('foo', **opts)], port)
    n = nginx_factory(conf, name=name, wait_ports=[('127.0.0.1', port)])
    return n, port, conf


def round_spread(bs, k):
    """Spread (s) of the k-th check times across backends (one round)."""
    times = [b.health_times[k] for b in bs]
    return max(times) - min(times)


def test_jitter_spreads_a_round(nginx_factory, backends):
    bs = backends(20)
    # concurrency 20: without jitter the whole round is one burst
    n, port, _ = start(nginx_factory, [b.addr for b in bs], concurrency=20, jitter=1000,
                       interval=200)
    wait_for(lambda: all(len(b.health_times) >= 3 for b in bs), timeout=20, what='3 rounds')
    spreads = [round_spread(bs, k) for k in (1, 2)]
    print('\njitter 1000 ms, 20 peers: round spreads %s s' % ['%.3f' % x for x in spreads])
    # 20 offsets hashed into [0, 1 s): spread over most of the window
    assert all(0.5 < s < 1.2 for s in spreads), spreads
    # an offset is the peer's own: each peer is checked once per round,
    # interval + the round's length (~jitter) apart
    gaps = [b.health_times[2] - b.health_times[1] for b in bs]
    assert all(0.9 < g < 1.9 for g in gaps), gaps
    # at most a few checks start in any 100 ms: no burst
    starts = sorted(b.health_times[1] for b in bs)
    burst = max(sum(1 for t in starts if s <= t < s + 0.1) for s in starts)
    assert burst <= 8, (burst, starts)

    bs2 = backends(20)
    start(nginx_factory, [b.addr for b in bs2], name='nojitter', concurrency=20, interval=200)
    wait_for(lambda: all(len(b.health_times) >= 3 for b in bs2), timeout=20, what='3 rounds')
    assert round_spread(bs2, 1) < 0.3          # the burst jitter avoids


def slot_groups(times, gap):
    """times (sorted) split where two neighbours are more than gap apart"""
    ts = sorted(times)
    groups = [[ts[0]]]
    for t in ts[1:]:
        if t - groups[-1][-1] > gap:
            groups.append([t])
        else:
            groups[-1].append(t)
    return groups


def test_jitter_checks_share_slots(nginx_factory, backends):
    # jitter 2000 ms: 20 slots of 100 ms; the peers of a slot are checked
    # together (shared wake-ups), the slots spread over the window
    bs = backends(40)
    start(nginx_factory, [b.addr for b in bs], concurrency=10, jitter=2000, interval=200)
    wait_for(lambda: all(len(b.health_times) >= 3 for b in bs), timeout=30, what='3 rounds')
    for k in (1, 2):
        times = [b.health_times[k] for b in bs]
        groups = slot_groups(times, 0.04)
        spans = [g[-1] - g[0] for g in groups]
        print('\nround %d: %d groups, sizes %s, widest %.3f s, round %.3f s'
              % (k, len(groups), [len(g) for g in groups], max(spans), max(times) - min(times)))
        # a slot's checks start together: no group reaches into the next slot
        assert max(spans) < 0.06, spans
        # still spread: many slots, over most of the window
        assert 8 <= len(groups) <= 20, groups
        assert max(times) - min(times) > 1.2
    # each peer once a round: interval + the round's length (~jitter) apart
    gaps = [b.health_times[2] - b.health_times[1] for b in bs]
    assert all(1.6 < g < 3.5 for g in gaps), gaps


def checks_during(b, seconds):
    before = b.health
    time.sleep(seconds)                # measuring a rate over a fixed window
    return b.health - before


def test_interval_unhealthy_faster(nginx_factory, backends):
    good, bad = backends(2)
    bad.status, bad.mode = 500, 'status'
    n, port, _ = start(nginx_factory, [good.addr, bad.addr], interval=1000,
                       interval_unhealthy=100, valid_statuses=[200])
    wait_state(port, bad.addr, 'DOWN')
    down_rate, up_rate = checks_during(bad, 2.0), good.health
    up_rate = good.health - up_rate
    assert down_rate >= 8, down_rate           # ~every 100 ms (+ check time)
    assert up_rate <= 4, up_rate               # ~every 1 s
    bad.mode = 'ok'
    wait_state(port, bad.addr, 'UP', timeout=3)


def test_interval_unhealthy_slower(nginx_factory, backends):
    good, bad = backends(2)
    bad.status, bad.mode = 500, 'status'
    n, port, _ = start(nginx_factory, [good.addr, bad.addr], interval=100,
                       interval_unhealthy=1000, valid_statuses=[200])
    wait_state(port, bad.addr, 'DOWN')
    g0 = good.health
    down_rate = checks_during(bad, 2.5)
    up_rate = good.health - g0
    assert 1 <= down_rate <= 4, down_rate
    assert up_rate >= 10, up_rate


def test_initial_state_down_at_start_and_reload(nginx_factory, backends):
    a, b, dead = backends(3)
    dead.stop()
    n, port, conf = start(nginx_factory, [a.addr, dead.addr], initial_state='down',
                          rise=3, interval=500)
    # DOWN before any check, UP after rise (3) successes; the dead one stays DOWN
    assert peer_states(port) == {a.addr: 'DOWN', dead.addr: 'DOWN'}
    wait_state(port, a.addr, 'UP')
    assert a.health >= 3
    assert 'peer %s is turned up after 3 success(es)' % a.addr in n.error_log
    assert peer_states(port)[dead.addr] == 'DOWN'

    # a reload adds b: new to the checker, so DOWN; a keeps its UP
    (n.prefix / 'conf' / 'nginx.conf').write_text(
        conf.replace('server %s;' % dead.addr, 'server %s;\n        server %s;' % (dead.addr, b.addr)))
    n.reload()
    states = peer_states(port)
    assert states[a.addr] == 'UP' and states[b.addr] == 'DOWN', states
    wait_state(port, b.addr, 'UP')
    assert b.health >= 3


def test_initial_state_default_is_up(nginx_factory, backends):
    (a,) = backends(1)
    n, port, _ = start(nginx_factory, [a.addr], interval=5000)
    assert peer_states(port) == {a.addr: 'UP'}
