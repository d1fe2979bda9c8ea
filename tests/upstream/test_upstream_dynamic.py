"""ngx.upstream on groups whose peers DNS changes while nginx runs (`zone` +
`server NAME resolve`, nginx 1.27.3+), against a real DNS server on loopback
(tests/support/dns.py) whose records change under a running nginx: ids read
before a change never reach another peer, names are copied under the lock,
get_servers reports a resolve line's current addresses, peers say which line
they came from, SRV backups change, new peers can be made to start down."""
import re
import threading
import time

import pytest

from conftest import conf_wrap, wait_for
from support.dns import DnsServer
from upstream_helpers import free_ports, front_server, get, lua_ok

ADDRS = ['127.0.%d.%d' % (77, i) for i in range(1, 9)]


@pytest.fixture
def dns():
    d = DnsServer().start()
    yield d
    d.stop()


def dyn_nginx(nginx_factory, dns, extra_upstreams=''):
    front, port = free_ports(2)
    listens = ''.join('listen %s:%d;' % (a, port) for a in ADDRS)
    http = """
    %(resolver)s
    resolver_timeout 2s;
    upstream dyn {
        zone dyn 256k;
        server app.test:%(port)d resolve;
    }
    upstream fixed {
        zone fixed 64k;
        server %(a1)s:%(port)d;
        server %(a2)s:%(port)d backup;
    }
    %(extra)s
    server {
        %(listens)s
        location / { return 200 "$server_addr"; }
    }
    """ % dict(resolver=dns.resolver(), port=port, a1=ADDRS[0], a2=ADDRS[1],
               listens=listens, extra=extra_upstreams % dict(port=port))
    http += front_server(front, 'location /p/ { proxy_pass http://dyn; }')
    n = nginx_factory(conf_wrap(http, workers=2), wait_ports=[('127.0.0.1', front)])
    return n, front, port


def peers(front, u='dyn', backup=False):
    fn = 'get_backup_peers' if backup else 'get_primary_peers'
    return lua_ok(front, 'return up.%s("%s")' % (fn, u))[0]


def names(front, u='dyn', backup=False):
    return sorted(p['name'] for p in peers(front, u, backup))


def wait_names(front, want, u='dyn', backup=False):
    want = sorted(want)
    wait_for(lambda: names(front, u, backup) == want, timeout=15,
             what='peers %r of %s' % (want, u))


def addr(a, port):
    return '%s:%d' % (a, port)


def test_an_id_read_before_a_change_never_reaches_another_peer(nginx_factory, dns):
    dns.set('app.test', ADDRS[:3])
    n, front, port = dyn_nginx(nginx_factory, dns)
    a1, a2, a3, a4 = (addr(a, port) for a in ADDRS[:4])
    wait_names(front, [a1, a2, a3])
    before = {p['name']: p['id'] for p in peers(front)}

    # DNS drops the middle address and adds one: it is appended at the tail
    dns.set('app.test', [ADDRS[0], ADDRS[2], ADDRS[3]])
    wait_names(front, [a1, a3, a4])

    res = lua_ok(front, 'return up.set_peer_down("dyn", false, %d, true)' % before[a3])
    assert res == [None, 'peers changed'], res
    assert not any(p.get('down') for p in peers(front)), peers(front)

    # an id read after the change still works, on the right peer
    now = {p['name']: p['id'] for p in peers(front)}
    assert lua_ok(front, 'return up.set_peer_down("dyn", false, %d, true)' % now[a3]) == [True]
    down = sorted(p['name'] for p in peers(front) if p.get('down'))
    assert down == [a3]
    # and the balancer honours it in both workers
    bodies = {get(front, '/p/x')[1] for _ in range(30)}
    assert bodies == {ADDRS[0], ADDRS[3]}, bodies


def test_peers_are_set_down_by_name(nginx_factory, dns):
    dns.set('app.test', ADDRS[:3])
    n, front, port = dyn_nginx(nginx_factory, dns)
    wait_names(front, [addr(a, port) for a in ADDRS[:3]])
    a2 = addr(ADDRS[1], port)
    assert lua_ok(front, 'return up.set_peer_down_by_name("dyn", false, "%s", true)' % a2) == [True]
    assert [p['name'] for p in peers(front) if p.get('down')] == [a2]
    assert lua_ok(front, 'return up.set_peer_down_by_name("dyn", false, "%s", false)' % a2) == [True]
    assert not any(p.get('down') for p in peers(front))
    assert lua_ok(front, 'return up.set_peer_down_by_name("dyn", false, "10.9.9.9:1", true)') \
        == [None, 'peer not found']
    assert lua_ok(front, 'return up.set_peer_down_by_name("nope", false, "x", true)') \
        == [None, 'upstream not found']
    # static groups too, backups included
    b = addr(ADDRS[1], port)
    assert lua_ok(front, 'return up.set_peer_down_by_name("fixed", true, "%s", true)' % b) == [True]
    assert peers(front, 'fixed', backup=True)[0].get('down') is True
    res = lua_ok(front, 'return pcall(up.set_peer_down_by_name, "dyn", false, "x")')
    assert res[0] is False and 'exactly 4 arguments expected' in res[1], res


def test_get_servers_reports_a_resolve_line_with_its_current_addresses(nginx_factory, dns):
    dns.set('app.test', ADDRS[:2])
    n, front, port = dyn_nginx(nginx_factory, dns)
    wait_names(front, [addr(a, port) for a in ADDRS[:2]])

    def servers():
        return lua_ok(front, 'return up.get_servers("dyn")')[0]

    srv = servers()
    assert len(srv) == 1 and srv[0]['resolve'] is True and srv[0]['host'] == 'app.test', srv
    assert srv[0]['name'] == 'app.test:%d' % port
    assert sorted(srv[0]['addr']) == [addr(a, port) for a in ADDRS[:2]], srv

    dns.set('app.test', [ADDRS[4]])
    wait_names(front, [addr(ADDRS[4], port)])
    assert servers()[0]['addr'] == addr(ADDRS[4], port)        # one address: a string

    dns.remove('app.test')                                       # NXDOMAIN: no peer left
    wait_names(front, [])
    assert servers()[0]['addr'] == []


def test_every_peer_says_which_server_line_it_came_from(nginx_factory, dns):
    dns.set('app.test', ADDRS[:3])
    n, front, port = dyn_nginx(nginx_factory, dns)
    wait_names(front, [addr(a, port) for a in ADDRS[:3]])
    assert {p['server'] for p in peers(front)} == {'app.test:%d' % port}
    assert peers(front, 'fixed')[0]['server'] == addr(ADDRS[0], port)
    assert peers(front, 'fixed', backup=True)[0]['server'] == addr(ADDRS[1], port)


SRV_UPSTREAM = """
    upstream bysrv {
        zone bysrv 256k;
        server app.test service=_http._tcp resolve;
    }"""


def test_srv_records_change_the_backup_list_at_run_time(nginx_factory, dns):
    for i in range(4):
        dns.set('h%d.app.test' % i, [ADDRS[i]])
    n, front, port = None, None, None
    # the SRV records need the port, which dyn_nginx picks: set them after
    dns.set('app.test', [])
    n, front, port = dyn_nginx(nginx_factory, dns, extra_upstreams=SRV_UPSTREAM)
    dns.set_srv('_http._tcp.app.test', [(10, 1, port, 'h0.app.test'),
                                        (20, 1, port, 'h1.app.test')])
    wait_names(front, [addr(ADDRS[0], port)], u='bysrv')
    wait_names(front, [addr(ADDRS[1], port)], u='bysrv', backup=True)

    dns.set_srv('_http._tcp.app.test', [(10, 1, port, 'h0.app.test'),
                                        (20, 1, port, 'h2.app.test'),
                                        (20, 1, port, 'h3.app.test')])
    wait_names(front, [addr(ADDRS[2], port), addr(ADDRS[3], port)], u='bysrv', backup=True)
    backup = peers(front, 'bysrv', backup=True)
    assert {p['server'] for p in backup} == {'h2.app.test', 'h3.app.test'}, backup
    # ids of the backup list carry the generation too
    stale = backup[0]['id']
    dns.set_srv('_http._tcp.app.test', [(10, 1, port, 'h0.app.test'),
                                        (20, 1, port, 'h3.app.test')])
    wait_names(front, [addr(ADDRS[3], port)], u='bysrv', backup=True)
    assert lua_ok(front, 'return up.set_peer_down("bysrv", true, %d, true)' % stale) \
        == [None, 'peers changed']
    srv = lua_ok(front, 'return up.get_servers("bysrv")')[0]
    assert sorted(srv[0]['addr']) == [addr(ADDRS[0], port), addr(ADDRS[3], port)], srv
    assert srv[0]['service'] == '_http._tcp'


def test_new_peers_start_down_after_set_new_peers_down(nginx_factory, dns):
    dns.set('app.test', ADDRS[:1])
    n, front, port = dyn_nginx(nginx_factory, dns)
    wait_names(front, [addr(ADDRS[0], port)])
    assert lua_ok(front, 'return up.set_new_peers_down("dyn", true)') == [True]
    dns.set('app.test', ADDRS[:2])
    wait_names(front, [addr(a, port) for a in ADDRS[:2]])
    state = {p['name']: bool(p.get('down')) for p in peers(front)}
    assert state == {addr(ADDRS[0], port): False, addr(ADDRS[1], port): True}, state
    # the new peer takes no traffic
    assert {get(front, '/p/x')[1] for _ in range(20)} == {ADDRS[0]}

    assert lua_ok(front, 'return up.set_new_peers_down("dyn", false)') == [True]
    dns.set('app.test', ADDRS[:3])
    wait_names(front, [addr(a, port) for a in ADDRS[:3]])
    assert not {p['name']: True for p in peers(front) if p.get('down')}.get(addr(ADDRS[2], port))
    assert lua_ok(front, 'return up.set_new_peers_down("fixed", true)') == [None, 'no resolve servers']
    assert lua_ok(front, 'return up.set_new_peers_down("nope", true)') == [None, 'upstream not found']


def test_the_generation_moves_with_the_peers(nginx_factory, dns):
    dns.set('app.test', ADDRS[:1])
    n, front, port = dyn_nginx(nginx_factory, dns)
    wait_names(front, [addr(ADDRS[0], port)])

    def gen(u='dyn'):
        return lua_ok(front, 'return up.get_peers_generation("%s")' % u)[0]

    g = gen()
    time.sleep(2.5)                     # two re-resolutions with the same answer
    assert gen() == g
    dns.set('app.test', ADDRS[:2])
    wait_names(front, [addr(a, port) for a in ADDRS[:2]])
    assert gen() > g
    assert gen('fixed') == gen('fixed')
    assert lua_ok(front, 'return up.get_peers_generation("nope")') == [None, 'upstream not found']


NAME_RE = re.compile(r'^127\.0\.77\.[1-8]:\d+$')

CHURN_READER = r"""
    local bad, calls = {}, 0
    local deadline = ngx.now() + 4
    while ngx.now() < deadline do
        for _, fn in ipairs({"get_primary_peers", "get_backup_peers"}) do
            local ps, err = up[fn]("dyn")
            if not ps then
                if err ~= "peers changed" then bad[#bad + 1] = fn .. ": " .. tostring(err) end
            else
                for _, p in ipairs(ps) do
                    if not p.name:match("^127%.0%.77%.[1-8]:%d+$")
                       or p.server ~= "app.test:PORT" then
                        bad[#bad + 1] = p.name .. " " .. tostring(p.server)
                    end
                end
            end
        end
        local srv = up.get_servers("dyn")
        calls = calls + 1
        ngx.sleep(0.001)
        ngx.update_time()
    end
    return calls, bad
"""


def test_names_stay_whole_while_dns_flaps(nginx_factory, dns):
    dns.set('app.test', ADDRS[:4])
    n, front, port = dyn_nginx(nginx_factory, dns)
    wait_names(front, [addr(a, port) for a in ADDRS[:4]])
    stop = threading.Event()

    def flap():
        sets = [ADDRS[:4], ADDRS[4:], ADDRS[2:6], ADDRS[::2], ADDRS[1::2]]
        i = 0
        while not stop.is_set():
            dns.set('app.test', sets[i % len(sets)])
            i += 1
            stop.wait(0.3)

    t = threading.Thread(target=flap, daemon=True)
    t.start()
    try:
        results = []
        readers = [threading.Thread(target=lambda: results.append(
            lua_ok(front, CHURN_READER.replace('PORT', str(port))))) for _ in range(2)]
        for r in readers:
            r.start()
        statuses = [get(front, '/p/x')[0] for _ in range(200)]
        for r in readers:
            r.join(30)
    finally:
        stop.set()
        t.join()
    assert len(results) == 2, results
    for calls, bad in results:
        assert calls > 50 and bad == [], (calls, bad[:10])
    assert statuses.count(200) >= 150, statuses
    assert not re.search(r'\[(alert|emerg|crit)\]', n.error_log), n.error_log[-2000:]


RESOLVE_HINTS = {
    # (zone, resolver) -> what `nginx -t` says (issue 27, item 9): nginx named
    # neither the directive to add (for the zone: "to be in shared memory") nor,
    # with both missing, the resolver, which only the next test run reported
    (False, False): 'resolving names at run time requires upstream "u" in %(conf)s:%(line)d to be in shared '
                    'memory: add "zone u 64k;" and "resolver ADDRESS;" to it',
    (False, True): 'resolving names at run time requires upstream "u" in %(conf)s:%(line)d to be in shared '
                   'memory: add "zone u 64k;" to it',
    (True, False): 'no resolver defined to resolve names at run time in upstream "u" in %(conf)s:%(line)d: '
                   'add "resolver ADDRESS;" to it or to %(block)s{}',
}


@pytest.mark.parametrize('block', ['http', 'stream'])
@pytest.mark.parametrize('zone,resolver', sorted(RESOLVE_HINTS), ids=lambda v: str(v))
def test_resolve_without_zone_or_resolver_names_the_fix(nginx_factory, block, zone, resolver):
    port = free_ports(1)[0]
    upstream = ('upstream u {\n'
                + ('    zone u 64k;\n' if zone else '')
                + '    server app.test:%d resolve;\n}\n' % port)
    blocks = {'http': 'server { listen 127.0.0.1:%d; location / { proxy_pass http://u; } }' % port,
              'stream': 'server { listen 127.0.0.1:%d; proxy_pass u; }' % port}
    body = ('resolver 127.0.0.1:1;\n' if resolver else '') + upstream + blocks[block]
    conf = ('daemon on;\nerror_log logs/error.log;\npid logs/nginx.pid;\nevents {}\n%s {\n%s\n}\n'
            % (block, body))
    n = nginx_factory(conf, start=False)
    path = n.prefix / 'conf' / 'nginx.conf'
    line = conf.splitlines().index('upstream u {') + 1
    r = n.test_config()
    assert r.returncode != 0
    want = 'nginx: [emerg] ' + RESOLVE_HINTS[(zone, resolver)] % dict(conf=path, line=line, block=block)
    assert want + '\n' in r.stderr, r.stderr
    # the hint followed as written is enough
    fixed = conf.replace('upstream u {\n', 'upstream u {\n    zone u 64k;\n    resolver 127.0.0.1:1;\n', 1)
    fixed = fixed.replace('    zone u 64k;\n    zone u 64k;\n', '    zone u 64k;\n')
    path.write_text(fixed)
    r = n.test_config()
    assert r.returncode == 0, r.stderr
