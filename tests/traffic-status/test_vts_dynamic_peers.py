"""traffic-status: upstream peers that DNS adds and removes while nginx runs
(`server NAME resolve` in a zone upstream, nginx 1.27.3+), against a real DNS
server on loopback (support/dns.py), with 2 workers.

Resolved peers are listed and counted under their upstream, the same in JSON
and Prometheus; a peer that leaves its upstream stays visible with its counts,
marked removed, until vhost_traffic_status_removed_peers' idle expiry or its
per-upstream cap evicts it (the oldest first), so address churn never fills
the zone; a peer that comes back keeps its counts; the dashboard marks new,
removed and draining peers.

Backends: one plain nginx listening on every address a test resolves (any
127.0.0.0/8 address is local), answering its own address."""
import re

import pytest

from cdp import CHROMIUM, Browser
from conftest import conf_wrap, free_port, wait_for
from support.backends import subnet
from support.dns import DnsServer
from support.probes import promtool
from vts_util import assert_nginx_t_fails, get, get_json, keepalive_requests

RAW = b'GET / HTTP/1.1\r\nHost: front.test\r\n\r\n'
# nginx re-resolves at valid=1s (+1 s): a change is seen within a few seconds
DNS_BOUND = 15


@pytest.fixture
def dns():
    d = DnsServer().start()
    yield d
    d.stop()


def listener_conf(addrs, port):
    listens = '\n'.join('        listen %s:%d;' % (a, port) for a in addrs)
    return conf_wrap("""
    server {
%s
        location / { return 200 "$server_addr\\n"; }
    }""" % listens)


def front_conf(dns, fport, sport, servers, extra_http='', zone='', html=False):
    fmt = 'vhost_traffic_status_display_format html;' if html else ''
    return conf_wrap(f"""
    vhost_traffic_status_zone{zone};
    {extra_http}
    {dns.resolver()}
    upstream dyn {{
        zone dyn 256k;
        {servers}
    }}
    server {{
        listen 127.0.0.1:{fport};
        server_name front.test;
        location / {{ proxy_pass http://dyn; }}
    }}
    server {{
        listen 127.0.0.1:{sport};
        server_name status.test;
        vhost_traffic_status off;
        location /status {{ vhost_traffic_status_display; {fmt} }}
    }}
""", workers=2)


class Stack:
    """Backends on `n` addresses of a random part of 127.0.0.0/8, and the front nginx."""

    def __init__(self, nginx_factory, dns, n):
        self.factory, self.dns = nginx_factory, dns
        _, a, b = map(int, subnet().split('.'))
        self.addrs = ['127.%d.%d.%d' % (a, (b + i // 250) % 256, 1 + i % 250) for i in range(n)]
        self.port = free_port()
        self.fport, self.sport = free_port(), free_port()
        nginx_factory(listener_conf(self.addrs, self.port), name='backends',
                      wait_ports=[(self.addrs[0], self.port)])

    def peer(self, i):
        return '%s:%d' % (self.addrs[i], self.port)

    def start(self, servers, **kw):
        self.front = self.factory(front_conf(self.dns, self.fport, self.sport, servers, **kw),
                                  name='front',
                                  wait_ports=[('127.0.0.1', self.fport), ('127.0.0.1', self.sport)])
        return self.front

    def send(self, n):
        assert keepalive_requests(self.fport, [RAW] * n) == n

    def doc(self):
        return get_json(self.sport)       # strict: valid UTF-8, no duplicate keys

    def peers(self, doc=None):
        """{server: entry} of upstream dyn; each server listed once."""
        doc = doc or self.doc()
        entries = doc['upstreamZones'].get('dyn', [])
        names = [p['server'] for p in entries]
        assert len(names) == len(set(names)), names
        return {p['server']: p for p in entries}

    def listed(self, doc=None):
        return {s for s, p in self.peers(doc).items() if not p.get('removed')}

    def removed(self, doc=None):
        return {s: p for s, p in self.peers(doc).items() if p.get('removed')}

    def wait_listed(self, want, what='the listed peers'):
        want = set(want)
        return wait_for(lambda: (lambda d: d if self.listed(d) == want else None)(self.doc()),
                        timeout=DNS_BOUND, interval=0.2, what=what)

    def prometheus(self):
        """{family: {backend: value}} of upstream dyn (code series summed);
        the page passes promtool."""
        st, _, body = get(self.sport, '/status/format/prometheus')
        assert st == 200
        ok, out = promtool(body)
        assert ok, out
        fams = {}
        for m in re.finditer(r'^(nginx_vts_upstream_\w+)\{upstream="dyn",backend="([^"]+)"'
                             r'(?:,([^}]*))?\} (\S+)$', body.decode(), re.M):
            fam, backend, extra, v = m.groups()
            if fam.endswith('_bucket'):
                continue
            f = fams.setdefault(fam, {})
            f[backend] = f.get(backend, 0) + float(v)
        return fams


@pytest.fixture
def stack(nginx_factory, dns):
    return lambda n=8: Stack(nginx_factory, dns, n)


def counts(peers):
    return {s: p['requestCounter'] for s, p in peers.items()}


def test_resolved_peers_are_listed_and_counted_in_every_view(stack, dns):
    s = stack(40)
    dns.set('app.test', s.addrs[:2])
    dns.set('more.test', s.addrs[1:3])        # the second address on both lines
    s.start('server app.test:%d resolve; server more.test:%d resolve;' % (s.port, s.port))
    s.wait_listed([s.peer(0), s.peer(1), s.peer(2)])
    # resolved after worker 0's first look: they joined at run time
    joined = wait_for(lambda: (lambda p: p if all(x['addedMsec'] for x in p.values()) else None)(
        s.peers()), what='the first peers marked new')

    s.send(30)
    doc = wait_for(lambda: (lambda d: d if sum(counts(s.peers(d)).values()) == 30 else None)(s.doc()),
                   what='30 requests counted on the peers')
    json_counts = counts(s.peers(doc))
    fams = s.prometheus()
    assert fams['nginx_vts_upstream_requests_total'] == {k: float(v) for k, v in json_counts.items()}
    assert fams['nginx_vts_upstream_peer_removed'] == {k: 0.0 for k in json_counts}
    assert all(v > 0 for v in json_counts.values()), json_counts

    # a new address first in the answer, the others reordered: joined at run time
    before = doc['nowMsec']
    dns.set('app.test', [s.addrs[3], s.addrs[1], s.addrs[0]])
    s.wait_listed([s.peer(i) for i in range(4)])
    # (marked by worker 0's next sweep, within a second)
    peers = wait_for(lambda: (lambda p: p if p[s.peer(3)]['addedMsec'] else None)(s.peers()),
                     what='the new peer marked new')
    assert peers[s.peer(3)]['addedMsec'] >= before, peers[s.peer(3)]
    assert peers[s.peer(0)]['addedMsec'] == joined[s.peer(0)]['addedMsec'] < before
    assert counts(peers)[s.peer(0)] == json_counts[s.peer(0)]

    # many addresses for one name (the answer comes over TCP): every one
    # listed in both views, before any has traffic
    dns.set('app.test', s.addrs)
    doc = s.wait_listed([s.peer(i) for i in range(40)], what='40 listed peers')
    fams = s.prometheus()
    assert set(fams['nginx_vts_upstream_requests_total']) == s.listed(doc)
    assert set(fams['nginx_vts_upstream_peer_down']) == s.listed(doc)

    s.send(80)
    doc = wait_for(lambda: (lambda d: d if sum(counts(s.peers(d)).values()) == 110 else None)(s.doc()),
                   what='110 requests counted')
    fams = s.prometheus()
    assert fams['nginx_vts_upstream_requests_total'] == {k: float(v) for k, v in
                                                        counts(s.peers(doc)).items()}


def traffic_then_remove(s, extra_http=''):
    """Peers 0 and 1 with 20 requests between them, then peer 1 leaves:
    (its entry before, the document that shows it removed)."""
    dns = s.dns
    dns.set('app.test', s.addrs)
    s.start('server app.test:%d resolve;' % s.port, extra_http=extra_http)
    s.wait_listed([s.peer(0), s.peer(1)])
    s.send(20)
    doc = wait_for(lambda: (lambda d: d if sum(counts(s.peers(d)).values()) == 20 else None)(s.doc()),
                   what='20 requests counted')
    kept = s.peers(doc)[s.peer(1)]
    assert kept['requestCounter'] > 0
    dns.set('app.test', s.addrs[:1])
    doc = wait_for(lambda: (lambda d: d if s.peer(1) in s.removed(d) else None)(s.doc()),
                   timeout=DNS_BOUND, interval=0.2, what='the peer shown removed')
    return kept, doc


def test_a_removed_peer_stays_visible_with_its_counts(stack):
    s = stack(2)
    kept, doc = traffic_then_remove(s)
    gone = s.removed(doc)[s.peer(1)]
    assert s.listed(doc) == {s.peer(0)}
    assert gone['removedMsec'] > 0 and gone['down'] is False
    for k in ('requestCounter', 'inBytes', 'outBytes', 'responses', 'responseMsecCounter'):
        assert gone[k] == kept[k], k
    fams = s.prometheus()
    assert fams['nginx_vts_upstream_peer_removed'] == {s.peer(0): 0.0, s.peer(1): 1.0}
    assert fams['nginx_vts_upstream_requests_total'][s.peer(1)] == kept['requestCounter']

    # the control endpoint's answer for that one peer says the same
    st, _, body = get(s.sport, '/status/control?cmd=status&group=upstream@group&zone=dyn@%s'
                      % s.peer(1))
    assert st == 200 and b'"removed":true' in body, body[:300]


def test_idle_expiry_evicts_a_removed_peer(stack):
    s = stack(2)
    kept, doc = traffic_then_remove(s, 'vhost_traffic_status_removed_peers 4s max=8;')
    gone = s.removed(doc)[s.peer(1)]
    nodes = doc['sharedZones']['usedNode']
    # 4 s after it left without a request, it is gone from every view
    doc = wait_for(lambda: (lambda d: d if s.peer(1) not in s.peers(d) else None)(s.doc()),
                   timeout=20, interval=0.2, what='the removed peer to expire')
    # (removedMsec may be read up to a sweep, 1 s, after the true removal)
    assert doc['nowMsec'] - gone['removedMsec'] >= 3000
    assert doc['sharedZones']['usedNode'] == nodes - 1
    assert set(s.prometheus()['nginx_vts_upstream_requests_total']) == {s.peer(0)}


def test_a_peer_that_comes_back_keeps_its_counts(stack, dns):
    s = stack(2)
    dns.set('app.test', s.addrs)
    s.start('server app.test:%d resolve;' % s.port)
    s.wait_listed([s.peer(0), s.peer(1)])
    s.send(10)
    doc = wait_for(lambda: (lambda d: d if sum(counts(s.peers(d)).values()) == 10 else None)(s.doc()),
                   what='10 requests counted')
    before = counts(s.peers(doc))

    dns.set('app.test', s.addrs[:1])
    wait_for(lambda: s.peer(1) in s.removed(), timeout=DNS_BOUND, interval=0.2, what='removed')
    back_at = s.doc()['nowMsec']
    dns.set('app.test', [s.addrs[1], s.addrs[0]])
    doc = s.wait_listed([s.peer(0), s.peer(1)], what='the peer back')
    back = s.peers(doc)[s.peer(1)]
    assert back['requestCounter'] == before[s.peer(1)] and back['removedMsec'] == 0
    # back in the list: new again (as soon as worker 0's sweep has seen it)
    wait_for(lambda: s.peers()[s.peer(1)]['addedMsec'] >= back_at, what='the peer new again')

    s.send(10)
    wait_for(lambda: sum(counts(s.peers()).values()) == 20, what='20 requests counted')

    # a name that no longer exists: every peer of its line leaves
    dns.remove('app.test')
    doc = wait_for(lambda: (lambda d: d if len(s.removed(d)) == 2 else None)(s.doc()),
                   timeout=DNS_BOUND, interval=0.2, what='both peers removed')
    assert sum(p['requestCounter'] for p in s.removed(doc).values()) == 20


def test_the_cap_evicts_the_oldest_removed_peer_first(stack, dns):
    s = stack(6)
    dns.set('app.test', s.addrs[:1])
    s.start('server app.test:%d resolve;' % s.port,
            extra_http='vhost_traffic_status_removed_peers 1h max=3;')
    for i in range(6):
        dns.set('app.test', s.addrs[i:i + 1])
        s.wait_listed([s.peer(i)])
        s.send(2)
        wait_for(lambda: s.peers()[s.peer(i)]['requestCounter'] == 2, what='counted')
    doc = wait_for(lambda: (lambda d: d if len(s.removed(d)) == 3 else None)(s.doc()),
                   what='three removed peers kept')
    # peers 0..4 left in that order: the three that left last are kept
    assert set(s.removed(doc)) == {s.peer(2), s.peer(3), s.peer(4)}
    assert all(p['requestCounter'] == 2 for p in s.removed(doc).values())
    wait_for(lambda: s.doc()['sharedZones']['droppedNodes']['evicted'] == 2,
             what='two evictions counted')
    assert set(s.prometheus()['nginx_vts_upstream_peer_removed']) == {s.peer(i) for i in range(2, 6)}


@pytest.mark.slow
def test_address_churn_keeps_the_zone_bounded(stack, dns):
    """300 distinct addresses over time, 10 at a time, with the defaults (the
    1m zone holds about 250 entries; 32 removed peers kept): it never fills."""
    s = stack(300)
    kept = 32
    dns.set('app.test', s.addrs[:10])
    front = s.start('server app.test:%d resolve;' % s.port)
    workers = sorted(wait_for(lambda: (lambda w: w if len(w) == 2 else None)(front.worker_pids()),
                              what='two workers'))
    most = 0
    for r in range(30):
        batch = [s.peer(i) for i in range(10 * r, 10 * r + 10)]
        dns.set('app.test', s.addrs[10 * r:10 * r + 10])
        doc = s.wait_listed(batch, what='round %d listed' % r)
        assert len(s.removed(doc)) <= kept
        s.send(20)
        most = max(most, doc['sharedZones']['usedNode'])
    # front.test + 10 listed + 32 kept, plus the 10 just removed until the
    # next sweep
    assert most <= 1 + 10 + kept + 10, most
    doc = wait_for(lambda: (lambda d: d if d['sharedZones']['usedNode'] <= 1 + 10 + kept else None)(
        s.doc()), what='the zone back to its bound')
    # the evicted entries' pages come back after the 10 s grace period
    doc = wait_for(lambda: (lambda d: d if d['sharedZones']['usedSize']
                            < (d['sharedZones']['usedNode'] + 1) * 4096 else None)(s.doc()),
                   timeout=25, interval=0.5, what='the evicted entries freed')
    z = doc['sharedZones']
    assert z['droppedNodes']['zoneFull'] == 0 and z['droppedNodes']['maxNode'] == 0, z
    assert z['droppedNodes']['evicted'] >= 300 - 10 - kept - 10, z
    assert z['freeSize'] > z['maxSize'] * 3 // 4, z
    assert len(s.removed(doc)) == kept
    s.prometheus()
    # still healthy: the same workers, answering
    assert sorted(front.worker_pids()) == workers
    st, _, body = get(s.fport, '/', host='front.test')
    assert st == 200 and body.decode().strip() in s.addrs[290:]


def test_srv_backups_are_listed_as_backup(stack, dns):
    s = stack(3)
    dns.set_srv('_http._tcp.srv.test', [(10, 1, s.port, 'a.srv.test'),
                                        (20, 1, s.port, 'b.srv.test')])
    dns.set('a.srv.test', s.addrs[:1])
    dns.set('b.srv.test', s.addrs[1:2])
    s.start('server srv.test service=http resolve;')
    doc = s.wait_listed([s.peer(0), s.peer(1)])
    peers = s.peers(doc)
    assert peers[s.peer(0)]['backup'] is False and peers[s.peer(1)]['backup'] is True
    s.send(4)
    wait_for(lambda: s.peers()[s.peer(0)]['requestCounter'] == 4, what='primary counted')

    # the lower priority record changes: the backup list changes, and the
    # backup that left is kept as removed
    dns.set('b.srv.test', s.addrs[2:3])
    doc = s.wait_listed([s.peer(0), s.peer(2)])
    assert s.peers(doc)[s.peer(2)]['backup'] is True
    assert set(s.removed(doc)) == {s.peer(1)}
    assert s.prometheus()['nginx_vts_upstream_peer_removed'] == {
        s.peer(0): 0.0, s.peer(1): 1.0, s.peer(2): 0.0}


@pytest.mark.parametrize('args,message', [
    ('10x', 'invalid expiry "10x"'),
    ('0', 'invalid expiry "0"'),
    ('10m max=0', 'invalid parameter "max=0"'),
    ('10m max=70000', 'invalid parameter "max=70000"'),
    ('10m 5', 'invalid parameter "5"'),
    ('off max=3', '"off" takes no "max=3"'),
    ('1m max=2 x', 'invalid number of arguments'),
])
def test_removed_peers_directive_errors(nginx_factory, args, message):
    assert_nginx_t_fails(nginx_factory, 'vhost_traffic_status_removed_peers %s;' % args, message)


def test_removed_peers_directive_is_not_repeated(nginx_factory):
    assert_nginx_t_fails(nginx_factory, 'vhost_traffic_status_removed_peers 1m;\n'
                         '    vhost_traffic_status_removed_peers 2m;', 'is duplicate')


@pytest.mark.parametrize('args', ['10m', '30s max=100', 'off'])
def test_removed_peers_directive_values(nginx_factory, args):
    conf = conf_wrap("""
    vhost_traffic_status_zone;
    vhost_traffic_status_removed_peers %s;
    server { listen 127.0.0.1:%d; }
""" % (args, free_port()))
    r = nginx_factory(conf, start=False).test_config()
    assert r.returncode == 0, r.stderr


CARDS = """(function () {
  var out = {}, t = document.querySelector('table[data-upstream="dyn"]');
  function texts(list) { return Array.prototype.map.call(list, function (x) { return x.textContent; }); }
  document.querySelectorAll('.card[data-card=peer][data-upstream="dyn"]').forEach(function (c) {
    var k = c.getAttribute('data-key');
    var row = t && t.querySelector('tr[data-peer="' + k + '"]');
    out[k] = {state: c.getAttribute('data-state'), isNew: c.getAttribute('data-new') === 'true',
              badges: texts(c.querySelectorAll('.badge')),
              info: c.querySelector('.card-info').textContent,
              markers: Array.prototype.map.call(c.querySelectorAll('svg[data-series=rps] .marker'),
                                                function (m) { return m.getAttribute('data-to'); }),
              row: row ? texts(row.querySelectorAll('td')) : null,
              rowState: row ? row.getAttribute('data-state') : null};
  });
  out.summary = t ? t.parentElement.previousElementSibling.textContent : '';
  out.updates = parseInt(document.body.getAttribute('data-updates') || '0', 10);
  return out;
})()"""


@pytest.mark.skipif(CHROMIUM is None, reason='needs Debian chromium')
def test_dashboard_marks_new_removed_and_draining_peers(stack, dns, tmp_path):
    s = stack(4)
    dns.set('app.test', s.addrs[1:3])
    s.start('server %s drain; server app.test:%d resolve;' % (s.peer(0), s.port), html=True)
    s.wait_listed([s.peer(0), s.peer(1), s.peer(2)])
    s.send(10)                              # (none to the draining peer)
    doc = wait_for(lambda: (lambda d: d if sum(counts(s.peers(d)).values()) == 10 else None)(s.doc()),
                   what='10 requests counted')
    left = s.peers(doc)[s.peer(2)]['requestCounter']

    b = Browser(tmp_path)
    try:
        b.navigate('http://127.0.0.1:%d/status' % s.sport)
        wait_for(lambda: b.eval(CARDS)['updates'] >= 2, timeout=20, what='two polls')
        dns.set('app.test', [s.addrs[1], s.addrs[3]])       # peer 2 leaves, peer 3 joins
        c = wait_for(lambda: (lambda c: c if (c.get(s.peer(2), {}).get('state') == 'removed'
                                              and c.get(s.peer(3), {}).get('isNew')) else None)(
            b.eval(CARDS)), timeout=DNS_BOUND + 5, interval=0.2, what='removed and new peers shown')

        gone, new, drain = c[s.peer(2)], c[s.peer(3)], c[s.peer(0)]
        assert gone['badges'] == ['REMOVED'] and gone['rowState'] == 'removed', gone
        assert gone['info'].startswith('removed ') and 'REMOVED' in gone['markers'], gone
        assert gone['row'][1] == 'removed' and gone['row'][2] == str(left), gone
        assert new['state'] == 'up' and new['badges'] == ['UP', 'NEW'], new
        assert new['row'][1] == 'up (new)' and 'NEW' in new['markers'], new
        assert drain['badges'] == ['UP', 'DRAINING'] and not drain['isNew'], drain
        assert drain['row'][1] == 'up (draining)', drain
        assert '3/3 up, 1 removed' in c['summary'], c['summary']
        shot = tmp_path / 'dashboard-dynamic-peers.png'
        b.eval("document.querySelector('table[data-upstream=\"dyn\"]').scrollIntoView()")
        b.screenshot(shot)
        print('\nscreenshot: %s' % shot)
        assert b.console_errors() == []
    finally:
        b.close()
