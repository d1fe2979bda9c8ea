"""`server ... drain` (nginx 1.29.6+): peer->down is a bit set, failed and
draining.  The checker's set_peer_down moves only the failed bit, so a
draining peer stays draining while it is checked DOWN and UP again, never
gets a new client request, and ngx.upstream and traffic-status report down
and drain as two things."""
from conftest import free_port, http_get, wait_for
from hcutil import hc_conf, wait_state
from support.confs import checker_lua
from support.probes import parse_json

UPSTREAM = '''
    upstream foo {
        zone foo 64k;
        sticky cookie srv_id;
        server %s;
        server %s drain;
    }'''

# this worker's peers of foo as ngx.upstream reports them
PEERS_LOCATION = '''
    vhost_traffic_status_zone;
    server {
        listen 127.0.0.1:%d;
        vhost_traffic_status off;
        location = /peers {
            content_by_lua_block {
                local up = require "ngx.upstream"
                -- one line a peer: "name down drain", then the server lines' flags
                for _, p in ipairs(up.get_primary_peers("foo")) do
                    ngx.say(p.name, " ", tostring(p.down == true), " ", tostring(p.drain == true))
                end
                for i, s in ipairs(up.get_servers("foo")) do
                    ngx.say("server", i, " ", tostring(s.down == true), " ", tostring(s.drain == true))
                end
            }
        }
        location /vts { vhost_traffic_status_display; vhost_traffic_status_display_format json; }
    }'''


def peers(port):
    """{name: {'down': bool, 'drain': bool}} of foo's peers and server lines."""
    st, _, body = http_get('127.0.0.1', port, '/peers')
    assert st == 200, body
    out = {}
    for line in body.decode().splitlines():
        name, down, drain = line.split()
        out[name] = {'down': down == 'true', 'drain': drain == 'true'}
    return out


def vts_peer(port, name):
    st, _, body = http_get('127.0.0.1', port, '/vts')
    assert st == 200
    doc = parse_json(body)
    return next(p for p in doc['upstreamZones']['foo'] if p['server'] == name)


def test_a_draining_peer_stays_draining_while_checked_down_and_up(nginx_factory, backends):
    b = backends(2)
    port, api = free_port(), free_port()
    conf = hc_conf([UPSTREAM % (b[0].addr, b[1].addr)],
                   [checker_lua('foo', interval=100, timeout=300, fall=2, rise=2,
                                valid_statuses=[200])],
                   port, workers=1, extra_http=PEERS_LOCATION % api)
    nginx_factory(conf, wait_ports=[('127.0.0.1', port), ('127.0.0.1', api)])
    wait_for(lambda: b[1].health >= 2, what='first checks of the draining peer')
    assert peers(api)[b[1].addr] == {'down': False, 'drain': True}
    assert peers(api)[b[0].addr] == {'down': False, 'drain': False}
    assert peers(api)['server1'] == {'down': False, 'drain': False}
    assert peers(api)['server2'] == {'down': False, 'drain': True}
    assert (vts_peer(api, b[1].addr)['down'], vts_peer(api, b[1].addr)['drain']) == (False, True)

    b[1].status, b[1].mode = 500, 'status'          # its checks fail: DOWN
    wait_state(port, b[1].addr, 'DOWN')
    assert peers(api)[b[1].addr] == {'down': True, 'drain': True}
    assert (vts_peer(api, b[1].addr)['down'], vts_peer(api, b[1].addr)['drain']) == (True, True)

    b[1].mode = 'ok'                                 # and pass again: UP, still draining
    wait_state(port, b[1].addr, 'UP')
    assert peers(api)[b[1].addr] == {'down': False, 'drain': True}
    assert (vts_peer(api, b[1].addr)['down'], vts_peer(api, b[1].addr)['drain']) == (False, True)

    # draining: no new client request reaches it (none carries its sticky cookie)
    for _ in range(20):
        st, _, body = http_get('127.0.0.1', port, '/?u=foo')
        assert st == 200 and body.decode() == b[0].name, body
