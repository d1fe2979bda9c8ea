"""traffic-status: peers marked down at run time (ngx.upstream.set_peer_down,
as the health checker does) show as down in JSON, Prometheus and back up.

Needs the lua-upstream module (ngx.upstream) in the same binary; skipped when
the bundle was built without it."""
import json

import pytest

from conftest import conf_wrap, free_port
from vts_util import backend_conf, get, get_json


@pytest.mark.parametrize('zone', ['', 'zone app_zone 64k;'])
def test_runtime_down_flag_is_shown(nginx_factory, zone):
    b = [free_port() for _ in range(4)]
    nginx_factory(backend_conf(b), name='backend', wait_ports=[('127.0.0.1', b[0])])
    fport, sport = free_port(), free_port()
    conf = conf_wrap(f"""
    vhost_traffic_status_zone;
    upstream app {{
        {zone}
        server 127.0.0.1:{b[0]};
        server 127.0.0.1:{b[1]};
    }}
    server {{
        listen 127.0.0.1:{fport};
        location / {{ proxy_pass http://app; }}
    }}
    server {{
        listen 127.0.0.1:{sport};
        vhost_traffic_status off;
        location /status {{ vhost_traffic_status_display; }}
        location = /mark {{
            content_by_lua_block {{
                local ok, up = pcall(require, "ngx.upstream")
                if not ok then
                    ngx.status = 501
                    ngx.say("no ngx.upstream")
                    return
                end
                local res, err = up.set_peer_down("app", false, tonumber(ngx.var.arg_id),
                                                  ngx.var.arg_down == "1")
                ngx.say(tostring(res), " ", tostring(err))
            }}
        }}
    }}
    """)
    nginx_factory(conf, name='front', wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    st, _, body = get(sport, '/mark?id=1&down=1')
    if st == 501:
        pytest.skip('bundle built without the lua-upstream module')
    assert st == 200 and body.startswith(b'true'), body
    peers = {p['server']: p for p in get_json(sport)['upstreamZones']['app']}
    assert peers['127.0.0.1:%d' % b[1]]['down'] is True
    assert peers['127.0.0.1:%d' % b[0]]['down'] is False
    st, _, text = get(sport, '/status/format/prometheus')
    assert ('nginx_vts_upstream_peer_down{upstream="app",backend="127.0.0.1:%d"} 1'
            % b[1]).encode() in text
    get(sport, '/mark?id=1&down=0')
    peers = {p['server']: p for p in get_json(sport)['upstreamZones']['app']}
    assert peers['127.0.0.1:%d' % b[1]]['down'] is False
