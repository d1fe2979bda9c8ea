"""ngx.upstream: return shapes, values and errors of every function
(shared/spec/ngx-upstream.md), through the real bundle with nginx backends
on loopback."""
import pathlib

import pytest

from conftest import conf_wrap, http_get, wait_for
from support.namespaces import NamespacedNginx, can_namespace_hosts
from upstream_helpers import (EVAL_LOCATION, backend_servers, free_ports, front_server, get, hits,
                              lua, lua_ok)


@pytest.fixture
def api(nginx_factory):
    """One nginx: explicit groups with and without zone, implicit groups
    from proxy_pass/fastcgi_pass, and three backends."""
    front, b1, b2, b3 = free_ports(4)
    locations = """
        location = /p/foo { proxy_pass http://foo; }
        location = /p/implicit { proxy_pass http://127.0.0.1:%(b1)d; }
        location = /p/named { proxy_pass http://localhost:%(b2)d; }
        location = /p/fcgi { fastcgi_pass 127.0.0.1:%(b3)d; }
        location = /p/again { proxy_pass http://foo; }
    """ % dict(b1=b1, b2=b2, b3=b3)
    http = """
    upstream foo {
        server 127.0.0.1:%(b1)d weight=3 max_fails=2 fail_timeout=7s;
        server 127.0.0.1:%(b2)d down;
        server 127.0.0.1:%(b3)d backup;
    }
    upstream fooz {
        zone fooz 64k;
        server 127.0.0.1:%(b1)d weight=3 max_fails=2 fail_timeout=7s;
        server 127.0.0.1:%(b2)d down;
        server 127.0.0.1:%(b3)d backup;
    }
    upstream nobackup {
        server 127.0.0.1:%(b1)d;
        server 127.0.0.1:%(b2)d;
    }
    """ % dict(b1=b1, b2=b2, b3=b3)
    http += backend_servers({'b1': b1, 'b2': b2, 'b3': b3})
    http += front_server(front, locations)
    n = nginx_factory(conf_wrap(http), wait_ports=[('127.0.0.1', front)])
    return dict(nginx=n, port=front, b1=b1, b2=b2, b3=b3)


def test_module_table_has_the_six_functions_and_the_dynamic_peer_extensions(api):
    res = lua_ok(api['port'], """
        local names = {}
        for k, v in pairs(up) do names[#names + 1] = k .. "=" .. type(v) end
        table.sort(names)
        return names, type(package.preload["ngx.upstream"]),
               package.loaded["ngx.upstream"] == up
    """)
    assert res == [sorted(['get_upstreams=function', 'get_servers=function',
                           'get_primary_peers=function', 'get_backup_peers=function',
                           'set_peer_down=function', 'current_upstream_name=function',
                           # for groups whose peers DNS changes (test_upstream_dynamic.py)
                           'set_peer_down_by_name=function', 'set_new_peers_down=function',
                           'get_peers_generation=function',
                           # the health checker's passive checks (issue 29)
                           'watch_live_failures=function', 'take_live_failures=function']),
                   'function', True]
    # the conf has no lua_package_path: the module is compiled in
    assert 'lua_package_path' not in (api['nginx'].prefix / 'conf' / 'nginx.conf').read_text()


def test_live_failures_of_watched_groups_are_recorded(api):
    """watch_live_failures/take_live_failures, the C side of the health
    checker's passive checks (issue 29): an attempt of a watched group whose
    status is watched is recorded with its address (here 200 is "failing"),
    a group nobody watches is not; the semaphore is posted once per batch;
    beyond 128 records between two takes they are counted, not kept."""
    port, b1 = api['port'], api['b1']
    assert lua_ok(port, """
        local sema = require("ngx.semaphore").new(0)
        package.loaded.live_failures_sema = sema
        return up.watch_live_failures("foo", {200, 503}, sema),
               up.watch_live_failures("nope", {200}, sema)
    """) == [True, None, 'upstream not found']
    for path in ('/p/foo', '/p/implicit', '/p/foo'):
        assert get(port, path)[0] == 200
    res = lua_ok(port, """
        local failures, dropped = up.take_live_failures()
        return failures, dropped, package.loaded.live_failures_sema:count(),
               #up.take_live_failures()
    """)
    want = {'upstream': 'foo', 'addr': '127.0.0.1:%d' % b1, 'status': 200}
    assert res == [[want, want], 0, 1, 0], res
    # nobody drains here: the buffer keeps 128, counts the rest, posts once more
    for _ in range(130):
        assert get(port, '/p/foo')[0] == 200
    res = lua_ok(port, """
        local failures, dropped = up.take_live_failures()
        return #failures, dropped, package.loaded.live_failures_sema:count()
    """)
    assert res == [128, 2, 2], res
    for call, err in (('"foo", {99}, sema', 'bad argument #2'), ('"foo", {200.5}, sema', 'bad argument #2'),
                      ('"foo", {200}, {}', 'bad argument #3'), ('"foo", {200}', 'exactly 3 arguments')):
        res = lua(port, 'local sema = package.loaded.live_failures_sema\n'
                        'return up.watch_live_failures(%s)' % call)[0]
        assert res[0] is False and err in res[1], (call, res)


def test_module_is_compiled_in(api):
    """Built by nginx's own configure/auto/make as a static addon."""
    r = api['nginx'].run('-V')
    assert '--add-module=../modules/lua-upstream' in r.stderr


def test_get_upstreams_lists_explicit_and_implicit_groups_in_order(api):
    (names,) = lua_ok(api['port'], 'return up.get_upstreams()')
    assert names == ['foo', 'fooz', 'nobackup',
                     '127.0.0.1:%d' % api['b1'], 'localhost:%d' % api['b2'],
                     '127.0.0.1:%d' % api['b3']]


def test_get_upstreams_rejects_arguments(api):
    res, _ = lua(api['port'], 'return up.get_upstreams("foo")')
    assert res == [False, 'no argument expected']


@pytest.mark.parametrize('group', ['foo', 'fooz'])
def test_get_servers_explicit_group(api, group):
    b1, b2, b3 = api['b1'], api['b2'], api['b3']
    (servers,) = lua_ok(api['port'], 'return up.get_servers(%r)' % group)
    assert servers == [
        {'addr': '127.0.0.1:%d' % b1, 'name': '127.0.0.1:%d' % b1,
         'weight': 3, 'max_fails': 2, 'fail_timeout': 7},
        {'addr': '127.0.0.1:%d' % b2, 'name': '127.0.0.1:%d' % b2,
         'weight': 1, 'max_fails': 1, 'fail_timeout': 10, 'down': True},
        {'addr': '127.0.0.1:%d' % b3, 'name': '127.0.0.1:%d' % b3,
         'weight': 1, 'max_fails': 1, 'fail_timeout': 10, 'backup': True},
    ]


def test_get_servers_implicit_groups(api):
    b1, b2, b3 = api['b1'], api['b2'], api['b3']
    res = lua_ok(api['port'], """
        return up.get_servers("127.0.0.1:%d"), up.get_servers("localhost:%d"),
               up.get_servers("127.0.0.1:%d")
    """ % (b1, b2, b3))
    # no `name` (no server line), fail_timeout 0 (nginx's zeroed pseudo-server)
    assert res == [
        [{'addr': '127.0.0.1:%d' % b1, 'weight': 0, 'max_fails': 0, 'fail_timeout': 0}],
        [{'addr': '127.0.0.1:%d' % b2, 'weight': 0, 'max_fails': 0, 'fail_timeout': 0}],
        [{'addr': '127.0.0.1:%d' % b3, 'weight': 0, 'max_fails': 0, 'fail_timeout': 0}],
    ]


def test_get_servers_errors(api):
    port = api['port']
    assert lua_ok(port, 'return up.get_servers("nope")') == [None, 'upstream not found']
    # a name must carry the group's port, and only that one
    assert lua_ok(port, 'return up.get_servers("127.0.0.1")') == [None, 'upstream not found']
    assert lua_ok(port, 'return up.get_servers("127.0.0.1:1")') == [None, 'upstream not found']
    assert lua_ok(port, 'return up.get_servers("foo:80")') == [None, 'upstream not found']
    assert lua(port, 'return up.get_servers()')[0] == [False, 'exactly one argument expected']
    assert lua(port, 'return up.get_servers("foo", 1)')[0] == \
        [False, 'exactly one argument expected']
    res = lua(port, 'return up.get_servers({})')[0]
    assert res[0] is False and 'bad argument #1' in res[1] and 'string expected' in res[1]


def peer(id_, name, weight=1, max_fails=1, fail_timeout=10, **extra):
    p = {'id': id_, 'name': name, 'weight': weight, 'current_weight': 0,
         'effective_weight': weight, 'conns': 0, 'fails': 0,
         'max_fails': max_fails, 'fail_timeout': fail_timeout}
    p.update(extra)
    return p


@pytest.mark.parametrize('group', ['foo', 'fooz'])
def test_get_primary_and_backup_peers(api, group):
    b1, b2, b3 = api['b1'], api['b2'], api['b3']
    prim, backup = lua_ok(api['port'], 'return up.get_primary_peers(%r), up.get_backup_peers(%r)'
                          % (group, group))
    # explicit groups: each peer names its server line (as written)
    assert prim == [peer(0, '127.0.0.1:%d' % b1, weight=3, max_fails=2, fail_timeout=7,
                         server='127.0.0.1:%d' % b1),
                    peer(1, '127.0.0.1:%d' % b2, down=True, server='127.0.0.1:%d' % b2)]
    assert backup == [peer(0, '127.0.0.1:%d' % b3, server='127.0.0.1:%d' % b3)]


def test_peers_of_implicit_groups_and_groups_without_backups(api):
    b1, b2 = api['b1'], api['b2']
    res = lua_ok(api['port'], """
        return up.get_primary_peers("localhost:%d"), up.get_backup_peers("localhost:%d"),
               up.get_primary_peers("127.0.0.1:%d"), up.get_backup_peers("nobackup")
    """ % (b2, b2, b1))
    # a name resolved by round robin itself gets weight 1, max_fails 1, 10s
    assert res[0] == [peer(0, '127.0.0.1:%d' % b2)]
    assert res[1] == []
    # a literal address: nginx's pseudo-server, all zero
    assert res[2] == [peer(0, '127.0.0.1:%d' % b1, weight=0, max_fails=0, fail_timeout=0)]
    assert res[3] == []


def test_get_peers_errors(api):
    port = api['port']
    for fn in ('get_primary_peers', 'get_backup_peers'):
        assert lua_ok(port, 'return up.%s("nope")' % fn) == [None, 'upstream not found']
        assert lua(port, 'return up.%s()' % fn)[0] == [False, 'exactly one argument expected']
        assert lua(port, 'return up.%s("foo", "bar")' % fn)[0] == \
            [False, 'exactly one argument expected']


@pytest.mark.parametrize('group', ['foo', 'fooz'])
def test_peer_counters_follow_traffic(api, group, nginx_factory):
    """fails/accessed/checked come from nginx: a dead peer is counted, and
    turning a peer up resets its fails."""
    port = api['port']
    dead = free_ports(1)[0]
    # a separate nginx whose group has a peer nobody listens on
    front = free_ports(1)[0]
    http = """
    upstream g {
        %s
        server 127.0.0.1:%d max_fails=5 fail_timeout=60s;
        server 127.0.0.1:%d max_fails=5 fail_timeout=60s;
    }
    """ % ('zone g 64k;' if group == 'fooz' else '', dead, api['b1'])
    http += front_server(front, 'location = /p { proxy_pass http://g; }')
    n = nginx_factory(conf_wrap(http), name='dead', wait_ports=[('127.0.0.1', front)])
    c = hits(front, '/p', 6)
    assert c == {'b1': 6}           # the dead one is skipped (next upstream)
    (peers,) = lua_ok(front, 'return up.get_primary_peers("g")')
    d, live = peers
    assert d['name'] == '127.0.0.1:%d' % dead and d['fails'] >= 1
    assert d['accessed'] > 1.7e9 and d['checked'] > 1.7e9
    assert 'down' not in d
    assert live['fails'] == 0 and 'accessed' not in live
    # marking down keeps fails; marking up resets them
    assert lua_ok(front, 'return up.set_peer_down("g", false, 0, true)') == [True]
    (peers,) = lua_ok(front, 'return up.get_primary_peers("g")')
    assert peers[0]['down'] is True and peers[0]['fails'] >= 1
    assert lua_ok(front, 'return up.set_peer_down("g", false, 0, false)') == [True]
    (peers,) = lua_ok(front, 'return up.get_primary_peers("g")')
    assert 'down' not in peers[0] and peers[0]['fails'] == 0


@pytest.mark.parametrize('group', ['foo', 'fooz'])
def test_set_peer_down_flags(api, group):
    port = api['port']
    res = lua_ok(port, """
        local a = up.set_peer_down(%(g)r, false, 0, true)
        local p1 = up.get_primary_peers(%(g)r)[1].down
        local b = up.set_peer_down(%(g)r, true, 0, 1)         -- truthy
        local p2 = up.get_backup_peers(%(g)r)[1].down
        local c = up.set_peer_down(%(g)r, false, 1, false)
        local p3 = up.get_primary_peers(%(g)r)[2].down
        local d = up.set_peer_down(%(g)r, true, 0, nil)        -- falsy
        local p4 = up.get_backup_peers(%(g)r)[1].down
        up.set_peer_down(%(g)r, false, 0, false)
        return a, p1, b, p2, c, p3, d, p4, up.get_primary_peers(%(g)r)[1].down
    """ % dict(g=group))
    assert res == [True, True, True, True, True, None, True, None, None]


def test_set_peer_down_errors(api):
    port = api['port']
    cases = {
        'up.set_peer_down("nope", false, 0, true)': [None, 'upstream not found'],
        'up.set_peer_down("nobackup", true, 0, true)': [None, 'no backup peers'],
        'up.set_peer_down("foo", false, 2, true)': [None, 'bad peer id'],
        'up.set_peer_down("foo", false, -1, true)': [None, 'bad peer id'],
        'up.set_peer_down("foo", true, 1, true)': [None, 'bad peer id'],
        'up.set_peer_down("fooz", false, 2, true)': [None, 'bad peer id'],
        'up.set_peer_down("fooz", true, 1, false)': [None, 'bad peer id'],
        'up.set_peer_down("127.0.0.1:%d", false, 1, true)' % api['b1']: [None, 'bad peer id'],
        'up.set_peer_down("127.0.0.1:%d", true, 0, true)' % api['b1']: [None, 'no backup peers'],
        # non-integer ids are bad ids, never truncated to a peer
        'up.set_peer_down("foo", false, 0.5, true)': [None, 'bad peer id'],
        'up.set_peer_down("foo", false, -0.5, true)': [None, 'bad peer id'],
        'up.set_peer_down("fooz", false, 0.5, true)': [None, 'bad peer id'],
        'up.set_peer_down("foo", true, 0.25, true)': [None, 'bad peer id'],
        'up.set_peer_down("foo", false, 0/0, true)': [None, 'bad peer id'],
        'up.set_peer_down("foo", false, 1/0, true)': [None, 'bad peer id'],
        'up.set_peer_down("foo", false, -1/0, true)': [None, 'bad peer id'],
        'up.set_peer_down("foo", false, 1e300, true)': [None, 'bad peer id'],
        'up.set_peer_down("foo", false, 2^63, true)': [None, 'bad peer id'],
    }
    for call, want in cases.items():
        assert lua_ok(port, 'return ' + call) == want, call
    for call in ('up.set_peer_down("foo", false, 0)', 'up.set_peer_down()',
                 'up.set_peer_down("foo", false, 0, true, 1)'):
        assert lua(port, 'return ' + call)[0] == [False, 'exactly 4 arguments expected'], call
    res = lua(port, 'return up.set_peer_down("foo", false, "x", true)')[0]
    assert res[0] is False and res[1].startswith('bad argument #3 to') \
        and 'number expected, got string' in res[1], res
    # nothing was changed by the failed calls
    (prim,) = lua_ok(port, 'return up.get_primary_peers("foo")')
    assert [p.get('down') for p in prim] == [None, True]
    for g in ('foo', 'fooz'):
        (back,) = lua_ok(port, 'return up.get_backup_peers("%s")' % g)
        assert [p.get('down') for p in back] == [None], (g, back)
    (primz,) = lua_ok(port, 'return up.get_primary_peers("fooz")')
    assert [p.get('down') for p in primz] == [None, True]


@pytest.fixture
def current(nginx_factory):
    front, b1, b2 = free_ports(3)
    locations = """
        header_filter_by_lua_block {
            local up = require "ngx.upstream"
            ngx.header["X-Cur"] = tostring(up.current_upstream_name())
            ngx.header["X-Access"] = ngx.ctx.access
        }
        location = /cur/foo {
            access_by_lua_block {
                ngx.ctx.access = tostring(require("ngx.upstream").current_upstream_name())
            }
            proxy_pass http://foo;
        }
        location = /cur/implicit { proxy_pass http://127.0.0.1:%(b1)d; }
        location = /cur/var_ip { proxy_pass http://127.0.0.1:$arg_p; }
        location = /cur/var_group { proxy_pass http://$arg_g; }
        location = /cur/none {
            content_by_lua_block {
                ngx.say(tostring(require("ngx.upstream").current_upstream_name()))
            }
        }
        location = /cur/log {
            proxy_pass http://foo;
            log_by_lua_block {
                ngx.shared.t:set("log", tostring(require("ngx.upstream").current_upstream_name()))
            }
        }
        location = /shared {
            content_by_lua_block {
                ngx.say(ngx.shared.t:get("iw"), "|", ngx.shared.t:get("timer"), "|",
                        ngx.shared.t:get("log"), "|", ngx.shared.t:get("init"))
            }
        }
    """ % dict(b1=b1)
    http = """
    lua_shared_dict t 1m;
    init_by_lua_block {
        local up = require "ngx.upstream"
        INIT_RESULT = type(up.get_upstreams)
    }
    init_worker_by_lua_block {
        local up = require "ngx.upstream"
        local ok, err = pcall(up.current_upstream_name)
        ngx.shared.t:set("iw", tostring(ok) .. " " .. tostring(err))
        ngx.shared.t:set("init", INIT_RESULT)
        ngx.timer.at(0, function()
            local ok, err = pcall(up.current_upstream_name)
            ngx.shared.t:set("timer", tostring(ok) .. " " .. tostring(err))
        end)
    }
    upstream foo { server 127.0.0.1:%(b1)d; }
    """ % dict(b1=b1)
    http += backend_servers({'b1': b1, 'b2': b2})
    http += front_server(front, locations)
    n = nginx_factory(conf_wrap(http), wait_ports=[('127.0.0.1', front)])
    return dict(nginx=n, port=front, b1=b1, b2=b2)


def cur(port, path):
    status, headers, body = http_get('127.0.0.1', port, path)
    return status, headers.get('x-cur'), headers.get('x-access'), body.decode()


def test_current_upstream_name_in_requests(current):
    port, b1, b2 = current['port'], current['b1'], current['b2']
    # proxied to a group: its name; access phase: no upstream yet
    assert cur(port, '/cur/foo') == (200, 'foo', 'nil', 'b1')
    assert cur(port, '/cur/implicit') == (200, '127.0.0.1:%d' % b1, None, 'b1')
    # a variable proxy_pass to an address that is no group: nil, no error
    assert cur(port, '/cur/var_ip?p=%d' % b2) == (200, 'nil', None, 'b2')
    # a variable naming a configured group: that group
    assert cur(port, '/cur/var_group?g=foo') == (200, 'foo', None, 'b1')
    # no upstream at all
    assert cur(port, '/cur/none') == (200, 'nil', None, 'nil\n')


def test_current_upstream_name_outside_requests(current):
    port = current['port']
    get(port, '/cur/log')

    def shared():
        return http_get('127.0.0.1', port, '/shared')[2].decode().strip()
    got = wait_for(lambda: 'nil' not in shared().split('|')[:3] and shared(),
                   what='init_worker, timer and log results')
    iw, timer, log, init = got.split('|')
    assert iw == 'false no request object found'
    assert timer == 'false no request object found'
    assert log == 'foo'
    assert init == 'function'       # require works in init_by_lua too


def test_multi_address_server_name(nginx_factory, tmp_path):
    """`server localhost:port` resolving to 127.0.0.1 and ::1: one server,
    two peers.  This host's /etc/hosts maps localhost to 127.0.0.1 only, so
    nginx runs in a private mount namespace with its own hosts file."""
    if not can_namespace_hosts():
        pytest.skip('needs root and unshare -m to give nginx its own /etc/hosts '
                    '(the host maps localhost to 127.0.0.1 only)')
    hosts = tmp_path / 'hosts'
    hosts.write_text('127.0.0.1 localhost\n::1 localhost\n')
    front, b = free_ports(2)
    http = """
    upstream m {
        server localhost:%(b)d max_fails=0;
        server 127.0.0.1:%(b)d backup;
    }
    server {
        listen 127.0.0.1:%(b)d;
        listen [::1]:%(b)d;
        location / { return 200 "$server_addr"; }
    }
    """ % dict(b=b)
    http += front_server(front, """
        location = /p { proxy_pass http://m; }
        location = /implicit { proxy_pass http://localhost:%d; }
    """ % b)
    n = nginx_factory(conf_wrap(http), start=False)
    n.__class__ = NamespacedNginx
    n.hosts_file = hosts
    n.start(wait_ports=[('127.0.0.1', front)])
    try:
        servers, prim, implicit, iprim = lua_ok(front, """
            return up.get_servers("m"), up.get_primary_peers("m"),
                   up.get_servers("localhost:%d"), up.get_primary_peers("localhost:%d")
        """ % (b, b))
        v4, v6 = '127.0.0.1:%d' % b, '[::1]:%d' % b
        # getaddrinfo's order (RFC 6724 puts ::1 first); peers keep it
        order = servers[0]['addr']
        assert sorted(order) == sorted([v4, v6])
        assert servers == [
            {'addr': order, 'name': 'localhost:%d' % b, 'weight': 1,
             'max_fails': 0, 'fail_timeout': 10},
            {'addr': v4, 'name': '127.0.0.1:%d' % b, 'weight': 1, 'max_fails': 1,
             'fail_timeout': 10, 'backup': True}]
        assert [(p['id'], p['name']) for p in prim] == [(0, order[0]), (1, order[1])]
        assert implicit == [{'addr': order, 'weight': 0, 'max_fails': 0,
                             'fail_timeout': 0}]
        assert [p['name'] for p in iprim] == order
        v6id = order.index(v6)
        # both addresses serve; with ::1 down only 127.0.0.1 does
        assert set(hits(front, '/p', 8)) == {'127.0.0.1', '::1'}
        assert lua_ok(front, 'return up.set_peer_down("m", false, %d, true)' % v6id) == [True]
        assert hits(front, '/p', 8) == {'127.0.0.1': 8}
        assert lua_ok(front, 'return up.set_peer_down("m", false, %d, false)' % v6id) == [True]
        assert set(hits(front, '/p', 8)) == {'127.0.0.1', '::1'}
    finally:
        n.stop()
    log = n.error_log + n.sanitizer_reports()
    assert 'AddressSanitizer' not in log and 'runtime error:' not in log \
        and 'exited on signal' not in log, log[-3000:]
