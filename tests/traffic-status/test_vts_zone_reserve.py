"""traffic-status, issue 26 item 7: the default sizes fit each other.  The
default 1 MB zone holds ~250 entries, the default filter cap is 1,024 per
group: 250 distinct `?k=` values used to fill the zone for good, after
which an upstream peer's requests and new Hosts were never counted.  Now
client-keyed entries (Host-keyed server zones, filter entries) never take
the last eighth of the zone (kept for server_name zones, upstream peers
and caches); a filter entry refused there evicts its group's least recently
updated entry (a few per grace period), whose page comes back after the
10 s grace period."""
import time

from conftest import conf_wrap, free_port, wait_for
from vts_util import backend_conf, get_json, many_requests



def start_front(nginx_factory, fport, sport, extra, servers):
    """A default 1m zone; a.test counts `?k=` as filter keys and proxies
    /up/ to `grp` (servers); status.test shows the JSON."""
    nginx_factory(conf_wrap(f"""
    vhost_traffic_status_zone;
    {extra}
    upstream grp {{ {servers} }}
    server {{
        listen 127.0.0.1:{fport};
        server_name a.test;
        vhost_traffic_status_filter_by_set_key $arg_k keys;
        location / {{ return 200 "ok\\n"; }}
        location /up/ {{ proxy_pass http://grp/; }}
    }}
    server {{
        listen 127.0.0.1:{sport};
        server_name status.test;
        vhost_traffic_status off;
        location /status {{ vhost_traffic_status_display; }}
    }}
"""), wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])


def test_default_zone_keeps_room_for_peers_and_new_keys(nginx_factory):
    fport, sport, bport = free_port(), free_port(), free_port()
    nginx_factory(backend_conf([bport]), name='backend', wait_ports=[('127.0.0.1', bport)])
    start_front(nginx_factory, fport, sport, 'vhost_traffic_status_filter_by_host on;',
                'server 127.0.0.1:%d;' % bport)
    flood = [b'GET /?k=%d HTTP/1.1\r\nHost: a.test\r\n\r\n' % i for i in range(300)]
    assert many_requests(fport, flood) == 300
    doc = get_json(sport)
    shared = doc['sharedZones']
    # an eighth of the zone stays free for configured entries
    assert shared['freeSize'] >= shared['maxSize'] // 8 - 4 * 4096, shared   # main: 0
    assert shared['droppedNodes']['zoneFull'] > 0 and shared['droppedNodes']['evicted'] > 0
    assert many_requests(fport, [b'GET /up/x HTTP/1.1\r\nHost: a.test\r\n\r\n'] * 10) == 10
    peers = get_json(sport)['upstreamZones']['grp']
    assert peers[0]['requestCounter'] == 10, peers      # main: 0 (zone full)
    # once the evicted entries' pages are back, a new Host is counted again
    time.sleep(11)
    assert many_requests(fport, [b'GET / HTTP/1.1\r\nHost: new.test\r\n\r\n']) == 1
    doc = get_json(sport)
    assert doc['serverZones']['new.test']['requestCounter'] == 1   # main: not counted


def test_configured_peers_have_room_after_a_flood(nginx_factory):
    """80 configured peers and a default 1m zone flooded with filter keys
    before the peers' first requests: every peer is counted (old code: only
    the ~30 that fit the zone's last eighth; the rest stayed at 0).  The
    sweep makes the configured peers' entries, which may take that eighth."""
    fport, sport, bport = free_port(), free_port(), free_port()
    addrs = ['127.0.61.%d' % i for i in range(1, 81)]
    listens = ''.join('        listen %s:%d;\n' % (a, bport) for a in addrs)
    nginx_factory(conf_wrap(f"""
    server {{
{listens}        location / {{ return 200 "ok\\n"; }}
    }}
"""), name='backend', wait_ports=[(addrs[-1], bport)])
    start_front(nginx_factory, fport, sport, '',
                ' '.join('server %s:%d;' % (a, bport) for a in addrs))
    # worker 0's first sweep (1 ms after the start) makes the 80 entries
    wait_for(lambda: get_json(sport)['sharedZones']['usedNode'] >= 80, what='the first sweep')
    flood = [b'GET /?k=%d HTTP/1.1\r\nHost: a.test\r\n\r\n' % i for i in range(400)]
    assert many_requests(fport, flood) == 400
    assert get_json(sport)['sharedZones']['droppedNodes']['zoneFull'] > 0   # the zone filled
    assert many_requests(fport, [b'GET /up/x HTTP/1.1\r\nHost: a.test\r\n\r\n'] * 160) == 160
    peers = get_json(sport)['upstreamZones']['grp']
    counts = {p['server']: p['requestCounter'] for p in peers}
    assert len(counts) == 80 and sum(counts.values()) == 160, counts
    assert all(v == 2 for v in counts.values()), counts
