"""traffic-status, issue 14: the VTS limit family (limit_traffic,
limit_traffic_by_set_key, limit, bypass_limit, limit_check_duplicate):
the configured code once the counter is over the size (as VTS: request:3
refuses the 5th request; issue 27 item 2).
The check runs in the preaccess phase (as limit_req): content here comes
from Lua or a proxy, since `return` answers in the rewrite phase, before it."""

import pytest

from conftest import conf_wrap, free_port
from vts_util import assert_nginx_t_fails, backend_conf, get_json, statuses


def start_front(nginx_factory, http_extra='', server_extra='', bport=None):
    fport, sport = free_port(), free_port()
    upstream = f'upstream grp {{ server 127.0.0.1:{bport}; }}' if bport else ''
    nginx_factory(conf_wrap(f"""
    vhost_traffic_status_zone shared:vts:4m;
    {http_extra}
    {upstream}
    server {{
        listen 127.0.0.1:{fport};
        server_name a.test;
        {server_extra}
        location / {{ content_by_lua_block {{ ngx.say("ok") }} }}
    }}
    server {{
        listen 127.0.0.1:{sport};
        server_name status.test;
        vhost_traffic_status off;
        location /status {{ vhost_traffic_status_display; }}
    }}
"""), wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    return fport, sport


def test_limit_traffic_requests(nginx_factory):
    fport, sport = start_front(nginx_factory, 'vhost_traffic_status_limit_traffic request:3;')
    assert statuses(fport, '/', 6) == [200, 200, 200, 200, 503, 503]
    z = get_json(sport)['serverZones']['a.test']
    assert z['requestCounter'] == 6 and z['responses']['5xx'] == 2


def test_limit_traffic_custom_code_and_bytes(nginx_factory):
    fport, sport = start_front(nginx_factory, '',
                               'vhost_traffic_status_limit_traffic out:1k 429;')
    codes = []
    for i in range(12):
        z = get_json(sport)['serverZones'].get('a.test', {'outBytes': 0})
        (c,) = statuses(fport, '/', 1)
        # each answer is well under 1 KB: the limit falls once over 1024 bytes were sent
        assert c == (429 if z['outBytes'] > 1024 else 200), (i, z['outBytes'], codes)
        codes.append(c)
    assert codes[0] == 200 and codes[-1] == 429


def test_limit_on_4xx_member(nginx_factory):
    fport, sport = start_front(nginx_factory, '', '''
        vhost_traffic_status_limit_traffic 4xx:2 503;
        location /missing { content_by_lua_block { ngx.exit(404) } }''')
    assert statuses(fport, '/', 2) == [200, 200]
    assert statuses(fport, '/missing', 4) == [404, 404, 404, 503]
    assert statuses(fport, '/', 1) == [503]


def test_bypass_limit_and_limit_off(nginx_factory):
    fport, sport = start_front(nginx_factory, 'vhost_traffic_status_limit_traffic request:2;', '''
        location /free { vhost_traffic_status_bypass_limit on; content_by_lua_block { ngx.say("f") } }
        location /off { vhost_traffic_status_limit off; content_by_lua_block { ngx.say("o") } }''')
    assert statuses(fport, '/', 4) == [200, 200, 200, 503]
    assert statuses(fport, '/free', 2) == [200, 200]
    assert statuses(fport, '/off', 2) == [200, 200]
    assert statuses(fport, '/', 1) == [503]


def test_limit_by_set_key_server_and_filter(nginx_factory):
    fport, sport = start_front(nginx_factory, '', '''
        vhost_traffic_status_filter_by_set_key $uri uris;
        location /f { vhost_traffic_status_limit_traffic_by_set_key FG@uris@/f request:2 429;
                      content_by_lua_block { ngx.say("f") } }
        location /n { vhost_traffic_status_limit_traffic_by_set_key NO@$host request:3;
                      content_by_lua_block { ngx.say("n") } }''')
    assert statuses(fport, '/f', 4) == [200, 200, 200, 429]
    # /n reads the a.test server zone: 4 requests already (the /f ones), over 3
    assert statuses(fport, '/n', 1) == [503]
    assert statuses(fport, '/', 1) == [200]            # no limit in location /


def test_limit_by_set_key_upstream_peer(nginx_factory):
    bport = free_port()
    nginx_factory(backend_conf([bport]), name='backend', wait_ports=[('127.0.0.1', bport)])
    fport, sport = start_front(nginx_factory, '', f'''
        location /up/ {{
            vhost_traffic_status_limit_traffic_by_set_key UG@grp@127.0.0.1:{bport} request:2 502;
            proxy_pass http://grp/;
        }}''', bport=bport)
    assert statuses(fport, '/up/x', 5) == [200, 200, 200, 502, 502]
    assert get_json(sport)['upstreamZones']['grp'][0]['requestCounter'] == 3


@pytest.mark.parametrize('dup,expected', [
    ('on', [200, 200, 200, 200, 200, 503]),      # the location's entry replaces the server's
    ('off', [200, 200, 200, 429, 429, 503]),     # both are checked, the location's first
])
def test_limit_check_duplicate(nginx_factory, dup, expected):
    fport, sport = start_front(nginx_factory, f'vhost_traffic_status_limit_check_duplicate {dup};', '''
        vhost_traffic_status_limit_traffic request:2 429;
        location /l { vhost_traffic_status_limit_traffic request:4 503;
                      content_by_lua_block { ngx.say("l") } }''')
    assert statuses(fport, '/l', 6) == expected


@pytest.mark.parametrize('directive,message', [
    ('vhost_traffic_status_limit_traffic bogus:10;', 'invalid limit "bogus:10"'),
    ('vhost_traffic_status_limit_traffic request;', 'invalid limit "request"'),
    ('vhost_traffic_status_limit_traffic request:abc;', 'invalid limit "request:abc"'),
    ('vhost_traffic_status_limit_traffic request:10 200;', 'invalid code "200"'),
    ('vhost_traffic_status_limit_traffic_by_set_key NO@x in:1g 600;', 'invalid code "600"'),
    ('vhost_traffic_status_limit maybe;', 'it must be "on" or "off"'),
])
def test_invalid_limits(nginx_factory, directive, message):
    assert_nginx_t_fails(nginx_factory, directive, message)


def test_every_v027_directive_parses(nginx_factory):
    text = conf_wrap(f"""
    vhost_traffic_status_zone;
    vhost_traffic_status_stats_by_upstream off;
    vhost_traffic_status_measure_status_codes 200 404;
    vhost_traffic_status_ignore_status 1xx 3xx;
    vhost_traffic_status_limit on;
    vhost_traffic_status_limit_check_duplicate on;
    vhost_traffic_status_limit_traffic in:64G;
    vhost_traffic_status_limit_traffic_by_set_key FG@country::$server_name@US out:1M 429;
    server {{
        listen 127.0.0.1:{free_port()};
        vhost_traffic_status_bypass_limit on;
        vhost_traffic_status_set_by_filter $c $arg_g/$host/requestCounter;
        location / {{ add_header X-C "$vts_request_counter $vts_cache_hit_counter $vts_request_time"; }}
    }}
""")
    r = nginx_factory(text, start=False).test_config()
    assert r.returncode == 0, r.stderr
