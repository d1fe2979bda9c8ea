"""A small stack for the fault tests: one nginx with a health-checked upstream
`foo`, traffic status with filter_by_host, a status page, a merged /metrics
and an shm probe, in front of support.backends servers on loopback."""
from support.backends import Backend
from support.confs import HEALTH_REQUEST, STATUS_LOCATION, LuaExpr, checker_lua, conf_wrap
from support.net import free_port, http_get
from support.probes import get_json

STATUS_LUA = STATUS_LOCATION + """
        location = /metrics {
            default_type text/plain;
            content_by_lua_block {
                local hc = require("resty.upstream.healthcheck")
                local out = hc.prometheus_status_page() or "# healthcheck unavailable\\n"
                local v = ngx.location.capture("/traffic/format/prometheus")
                ngx.print(out, v.body)
            }
        }
        location /traffic {
            vhost_traffic_status_display;
            vhost_traffic_status_display_format json;
        }
        location = /shm {
            default_type text/plain;
            content_by_lua_block {
                local d = ngx.shared.healthcheck
                if ngx.var.arg_key then ngx.say(tostring(d:get(ngx.var.arg_key))) return end
                ngx.say(d:capacity() - d:free_space(), " ", #d:get_keys(0))
            }
        }
        location = /pid { content_by_lua_block { ngx.say(ngx.worker.pid()) } }
"""


def checker(upstream, interval=200, timeout=500, fall=2, rise=2):
    """The stack's checker: /health with Host: <upstream>, 200 only."""
    return checker_lua(upstream, http_req=LuaExpr(HEALTH_REQUEST % upstream), interval=interval,
                       timeout=timeout, fall=fall, rise=rise, valid_statuses=[200],
                       concurrency=10)


def stack_conf(port, upstreams, checkers, workers=2, shm='1m', vts_zone='shared:vts:1m',
               main='', extra_http=''):
    """upstreams: {name: [addr, ...]}; checkers: [checker(...) text]"""
    ups = '\n'.join('    upstream %s {\n%s\n    }' % (
        name, '\n'.join('        server %s;' % a for a in addrs)) for name, addrs in upstreams.items())
    return conf_wrap("""
    lua_shared_dict healthcheck %s;
    lua_socket_log_errors off;
    vhost_traffic_status_zone %s;
    vhost_traffic_status_filter_by_host on;
%s
    init_worker_by_lua_block {
%s
    }
%s
    server {
        listen 127.0.0.1:%d;
        location / {
            proxy_pass http://foo;
        }
%s
    }
""" % (shm, vts_zone, ups, '\n'.join(checkers), extra_http, port, STATUS_LUA),
        workers=workers, main=main)


def backends(n, base='127.0.31.', port=None, **kw):
    port = port or free_port()
    return [Backend('%s%d' % (base, i + 1), port, name='b%d' % i, **kw).start() for i in range(n)]


def vts_json(port):
    return get_json(port, '/traffic/format/json')


def shm_get(port, key):
    return http_get('127.0.0.1', port, '/shm?key=' + key)[2].decode().strip()
