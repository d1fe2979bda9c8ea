"""traffic-status: a scrape that waits for a render slot never reads entries
freed while it waited (issue 26, item 1).

Filter entries keyed by client input ($arg_g / $arg_k) under a filter_max_node
cap, so new keys evict old ones.  Four clients that never read hold the
worker's four render slots (outputs far larger than the socket buffers: a
small sndbuf on the listen and a small receive buffer); one more scrape waits
for a slot.  Meanwhile every entry that existed when it arrived is evicted,
the store's grace period passes, the evicted entries' pages are freed and
taken by new entries; another waiting scrape's client leaves.  Then one
stalled client reads on: its render, paused all along, is given up rather
than resumed on freed entries.  The other stalled clients leave and the
waiting scrape renders.  Before the fix it rendered its arrival-time node
pointers, by then other entries' memory: entries created after its
snapshot, group keys repeated (duplicate JSON keys).

Since issue 26, item 3, a client that takes nothing gives its render slot
up within 200 ms, so stalled clients no longer make a scrape wait: it is
answered at once with its arrival's live set, and a scrape after the churn
with the live set then, while the stalled renders stay paused on their
freed entries; the one that reads on is given up as before.  Each output
must be one moment's live set: strict JSON, exactly the entries live then;
and the slots are all free again afterwards."""
import json
import random
import re
import select
import socket

from conftest import conf_wrap, free_port, wait_for
from support.probes import parse_json
from vts_util import dechunk, get, keepalive_requests, read_all

GROUPS = 4          # filter groups g0..g3, in a random order of creation
CAP = 256           # filter_max_node for the g* groups together
STALLED = 4         # the worker's render slots (VTS_RENDERS)


def conf(fport, sport):
    # sndbuf on the status listen and send_timeout well past the test: a
    # stalled render keeps its slot until its client leaves
    return conf_wrap(f"""
    vhost_traffic_status_zone shared:vts:8m;
    vhost_traffic_status_filter_max_node {CAP} g;
    server {{
        listen 127.0.0.1:{fport};
        server_name default.test;
        vhost_traffic_status_filter_by_set_key $arg_k $arg_g;
        location / {{ return 200 "ok\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{sport} sndbuf=8k;
        server_name status.test;
        vhost_traffic_status off;
        send_timeout 300s;
        location /status {{ vhost_traffic_status_display; }}
    }}
""")


class Keys:
    """The filter keys in the order nginx created them (one keep-alive
    connection, one worker: creation order is request order).  Every key
    gets one request, so the least recently updated is the oldest and the
    live entries are always the last CAP created.  Groups are drawn at
    random (seeded): entries in pages freed and taken again seldom keep
    their group, so a render of stale pointers repeats group keys."""

    def __init__(self, port):
        self.port = port
        self.created = []
        self.rng = random.Random(26)

    def create(self, n):
        new = [('g%d' % self.rng.randrange(GROUPS), 'k%06d' % i)
               for i in range(len(self.created), len(self.created) + n)]
        raws = [b'GET /?g=%s&k=%s HTTP/1.1\r\nHost: default.test\r\n\r\n'
                % (g.encode(), k.encode()) for g, k in new]
        assert keepalive_requests(self.port, raws) == n
        self.created.extend(new)

    def live(self):
        return set(self.created[-CAP:])


def main_section(sport):
    """zone=::main of the control endpoint: answered at once, without a
    render slot."""
    st, _, body = get(sport, '/status/control?cmd=status&group=server&zone=::main')
    assert st == 200, body[:300]
    return parse_json(body)


def has_data(s):
    if not select.select([s], [], [], 0)[0]:
        return False
    return len(s.recv(1, socket.MSG_PEEK)) > 0


def stalled_scrape(sport):
    """A Prometheus scrape whose client never reads: once its first bytes are
    here its render holds a slot, paused until the client takes more."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(60)
    s.connect(('127.0.0.1', sport))
    s.sendall(b'GET /status/format/prometheus HTTP/1.1\r\nHost: status.test\r\n\r\n')
    wait_for(lambda: has_data(s), timeout=30, what='the stalled render to start')
    return s


class Pairs(list):
    """A JSON object as its (key, value) pairs, duplicates kept."""


def rendered_filters(body):
    """[(group, key)] of filterZones in output order, duplicates kept, and
    the group keys that repeat."""
    doc = json.loads(body, object_pairs_hook=Pairs)
    zones = [v for k, v in doc if k == 'filterZones']
    assert len(zones) == 1, 'filterZones %d times' % len(zones)
    groups = [g for g, _ in zones[0]]
    entries = [(g, k) for g, keys in zones[0] for k, _ in keys]
    return entries, len(groups) - len(set(groups))


def writing(sport):
    """Requests past their headers: the stalled, the parked, and the control
    request asking."""
    return main_section(sport)['connections']['writing']


def parked_scrape(sport):
    s = socket.create_connection(('127.0.0.1', sport), timeout=120)
    s.sendall(b'GET /status/format/json HTTP/1.1\r\nHost: status.test\r\n'
              b'Connection: close\r\n\r\n')
    return s


def test_parked_render_reads_no_freed_entry(nginx_factory):
    fport, sport = free_port(), free_port()
    n = nginx_factory(conf(fport, sport), workers=1,
                      wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    keys = Keys(fport)
    keys.create(CAP)
    at_arrival = keys.live()
    used0 = main_section(sport)['sharedZones']['usedSize']

    stalled = [stalled_scrape(sport) for _ in range(STALLED)]
    # the scrape under test, and one whose client leaves while it waits
    parked, leaver = parked_scrape(sport), parked_scrape(sport)
    leaver.close()
    # clients that never read hold no slot for long (issue 26, item 3): the
    # scrape is answered at once, with the live set of its arrival, while
    # the stalled renders stay paused
    parked.settimeout(5)
    resp = read_all(parked)
    parked.close()
    head, body = dechunk(resp)
    assert head.startswith(b'HTTP/1.1 200'), head
    check_one_moment(body, at_arrival)
    assert writing(sport) == STALLED + 1, 'the stalled renders were not kept paused'

    # every entry live at their snapshot is evicted into the graveyard ...
    keys.create(CAP)
    grave = main_section(sport)['sharedZones']['usedSize'] - used0
    assert grave > 0, 'nothing was evicted'

    # ... and freed after the grace period (a new entry collects it)
    def freed():
        keys.create(1)
        return main_section(sport)['sharedZones']['usedSize'] - used0 < grave / 2
    wait_for(freed, timeout=90, interval=0.5, what='the evicted entries to be freed')
    # new entries take the freed pages
    keys.create(CAP)
    final = keys.live()

    # a paused render whose entries were freed meanwhile: when its client
    # reads on, it is given up (what was sent before is its snapshot's)
    paused = stalled.pop(0)
    got = read_all(paused)
    paused.close()
    names = set(re.findall(rb'filter_name="(k\d{6})"', got))
    assert names and names <= {k.encode() for _, k in at_arrival}, \
        '%d of the paused render\'s entries not in its snapshot' % len(
            names - {k.encode() for _, k in at_arrival})
    assert not got.endswith(b'\r\n0\r\n\r\n'), 'the paused render was not given up'
    assert 'render given up' in n.error_log

    # a scrape now, while the other stalled renders are still paused on
    # freed entries, shows the live set of now
    waiting = parked_scrape(sport)
    waiting.settimeout(5)
    head, body = dechunk(read_all(waiting))
    waiting.close()
    assert head.startswith(b'HTTP/1.1 200'), head
    check_one_moment(body, final)
    for s in stalled:
        s.close()

    # every slot is free again (none kept by a client that left, waiting or
    # rendering): four new renders start at once
    again = [stalled_scrape(sport) for _ in range(STALLED)]
    for s in again:
        s.close()


def check_one_moment(body, live):
    """The filter entries of a JSON scrape are exactly `live`: strict JSON,
    no group or entry twice, none foreign."""
    entries, repeated_groups = rendered_filters(body)
    seen = set(entries)
    assert repeated_groups == 0 and len(seen) == len(entries) and seen == live, (
        'the scrape rendered %d filter entries (%d distinct): %d live, %d not; '
        'group keys repeated %d times'
        % (len(entries), len(seen), len(seen & live), len(seen - live), repeated_groups))
    parse_json(body)        # the kit's strict parser: no duplicate key anywhere
