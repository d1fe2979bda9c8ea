"""set_peer_down is honoured by nginx's balancers: requests stop reaching a
peer marked down and come back when it is marked up.  Without `zone` the
change is per worker; with `zone` every worker sees it at once."""
import pytest

from conftest import conf_wrap
from upstream_helpers import (backend_servers, free_ports, front_server, hits,
                              hits_by_worker, lua, lua_ok,
                              until_every_worker_sees)

BALANCERS = {
    'round_robin': '',
    'least_conn': 'least_conn;',
    'hash': 'hash $arg_k;',
    'hash_consistent': 'hash $arg_k consistent;',
    'ip_hash': 'ip_hash;',
    'random': 'random;',
    'keepalive': 'keepalive 4;',
}


def start(nginx_factory, group_conf, workers=1, reuseport=False, name='n'):
    front, b1, b2, b3 = free_ports(4)
    http = group_conf % dict(b1=b1, b2=b2, b3=b3)
    http += backend_servers({'b1': b1, 'b2': b2, 'b3': b3})
    http += front_server(front, """
        location = /p {
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://g;
        }
    """, reuseport=reuseport)
    n = nginx_factory(conf_wrap(http, workers=workers), name=name, workers=workers,
                      wait_ports=[('127.0.0.1', front)])
    return n, front


def keyed_hits(port, n):
    """n requests with keys 0..n-1 (used by the hash balancers)."""
    from collections import Counter
    from upstream_helpers import get
    c = Counter()
    for k in range(n):
        status, body, _ = get(port, '/p?k=%d' % k)
        c[body if status == 200 else status] += 1
    return c


@pytest.mark.parametrize('zone', [False, True], ids=['local', 'zone'])
@pytest.mark.parametrize('balancer', sorted(BALANCERS))
def test_peer_down_is_honoured(nginx_factory, balancer, zone):
    conf = """
    upstream g {
        %s
        %s
        server 127.0.0.1:%%(b1)d;
        server 127.0.0.1:%%(b2)d;
        server 127.0.0.1:%%(b3)d;
    }
    """ % (BALANCERS[balancer], 'zone g 64k;' if zone else '')
    n, port = start(nginx_factory, conf)
    n_req = 30

    before = keyed_hits(port, n_req)
    assert sum(before.values()) == n_req and set(before) <= {'b1', 'b2', 'b3'}, before
    victim = before.most_common(1)[0][0]
    vid = int(victim[1]) - 1                    # b1 is peer 0, ...
    (peers,) = lua_ok(port, 'return up.get_primary_peers("g")')
    assert len(peers) == 3 and peers[vid]['id'] == vid and 'down' not in peers[vid]

    assert lua_ok(port, 'return up.set_peer_down("g", false, %d, true)' % vid) == [True]
    during = keyed_hits(port, n_req)
    assert victim not in during and sum(during.values()) == n_req, during
    assert set(during) <= {'b1', 'b2', 'b3'}, during       # no errors either

    assert lua_ok(port, 'return up.set_peer_down("g", false, %d, false)' % vid) == [True]
    after = keyed_hits(port, n_req)
    assert after[victim] > 0, after


@pytest.mark.parametrize('zone', [False, True], ids=['local', 'zone'])
def test_backup_takes_over_and_can_be_turned_down(nginx_factory, zone):
    conf = """
    upstream g {
        %s
        server 127.0.0.1:%%(b1)d;
        server 127.0.0.1:%%(b2)d;
        server 127.0.0.1:%%(b3)d backup;
    }
    """ % ('zone g 64k;' if zone else '')
    n, port = start(nginx_factory, conf)
    assert set(hits(port, '/p', 10)) == {'b1', 'b2'}
    lua_ok(port, """
        assert(up.set_peer_down("g", false, 0, true))
        assert(up.set_peer_down("g", false, 1, true))
    """)
    assert hits(port, '/p', 10) == {'b3': 10}
    assert lua_ok(port, 'return up.set_peer_down("g", true, 0, true)') == [True]
    assert hits(port, '/p', 4) == {502: 4}          # every peer is down
    assert lua_ok(port, 'return up.set_peer_down("g", false, 1, false)') == [True]
    assert hits(port, '/p', 10) == {'b2': 10}
    assert lua_ok(port, 'return up.set_peer_down("g", true, 0, false)') == [True]
    assert hits(port, '/p', 10) == {'b2': 10}       # backups only when no primary


GROUP2 = """
    upstream g {
        %s
        server 127.0.0.1:%%(b1)d;
        server 127.0.0.1:%%(b2)d;
    }
"""

WORKERS = 3


def test_zone_change_is_seen_by_every_worker(nginx_factory):
    n, port = start(nginx_factory, GROUP2 % 'zone g 64k;', workers=WORKERS, reuseport=True)
    workers = n.worker_pids()
    assert len(workers) == WORKERS

    until_every_worker_sees(port, '/p', workers, 'b2')

    res, setter = lua(port, 'return up.set_peer_down("g", false, 1, true)')
    assert res == [True, True]
    seen = hits_by_worker(port, '/p', workers, 10)
    for pid, c in seen.items():
        assert c == {'b1': sum(c.values())}, ('worker %d still uses b2' % pid, setter, seen)

    # every worker also reports the flag
    flags = {}
    while set(flags) != set(workers):
        res, pid = lua(port, 'return up.get_primary_peers("g")[2].down')
        flags[pid] = res
    assert all(f == [True, True] for f in flags.values()), flags

    res, _ = lua(port, 'return up.set_peer_down("g", false, 1, false)')
    assert res == [True, True]
    seen = until_every_worker_sees(port, '/p', workers, 'b2')
    assert all(c['b2'] > 0 for c in seen.values()), seen


def test_local_change_stays_in_its_worker(nginx_factory):
    """Without zone, only the worker that ran set_peer_down changes."""
    n, port = start(nginx_factory, GROUP2 % '', workers=WORKERS, reuseport=True)
    workers = n.worker_pids()
    res, setter = lua(port, 'return up.set_peer_down("g", false, 1, true)')
    assert res == [True, True] and setter in workers
    seen = hits_by_worker(port, '/p', workers, 8)
    for pid, c in seen.items():
        if pid == setter:
            assert c == {'b1': sum(c.values())}, (pid, seen)
        else:
            # per-worker round robin alternates: 8 requests reach b2
            assert c['b2'] > 0, (pid, seen)
