"""Upstreams with `server NAME resolve` (nginx 1.27.3+): their peers change
with DNS while nginx runs, and peer ids are list positions, so until the
checker follows such peer sets spawn_checker refuses them with nil, err
(checking them would set the wrong peers down).  get_servers says which
lines resolve and their host name."""
import re

from conftest import free_port, http_get, wait_for
from hcutil import hc_conf
from support.confs import checker_lua

# No DNS server answers on this resolver address: nginx starts all the same
# (names are resolved at run time) and the upstream has no peer yet.
UPSTREAMS = '''
    upstream dyn {
        zone dyn 64k;
        resolver 127.0.0.1:%d valid=1s;
        resolver_timeout 1s;
        server 127.0.0.1:%d;
        server backend.test:8080 resolve;
    }'''

SERVERS_LOCATION = '''
    server {
        listen 127.0.0.1:%d;
        location = /servers {
            content_by_lua_block {
                for i, s in ipairs(require("ngx.upstream").get_servers("dyn")) do
                    ngx.say(i, " ", s.name, " ", tostring(s.resolve), " ", tostring(s.host))
                end
            }
        }
    }'''


def test_spawn_checker_refuses_an_upstream_with_resolve_servers(nginx_factory):
    port, api = free_port(), free_port()
    conf = hc_conf([UPSTREAMS % (free_port(), free_port())],
                   [checker_lua('dyn', interval=100)], port,
                   extra_http=SERVERS_LOCATION % api)
    n = nginx_factory(conf, wait_ports=[('127.0.0.1', port), ('127.0.0.1', api)])
    wait_for(lambda: 'failed to spawn health checker for dyn' in n.error_log,
             what='the checker to refuse the upstream')
    assert re.search(r'failed to spawn health checker for dyn: upstream dyn has a server resolved at '
                     r'run time \(backend\.test:8080 resolve\): its peers change while nginx runs, which '
                     r'this checker does not support yet', n.error_log), n.error_log[-2000:]
    st, _, body = http_get('127.0.0.1', api, '/servers')
    lines = body.decode().splitlines()
    assert st == 200 and len(lines) == 2, body
    assert lines[0].endswith(' nil nil')           # a plain line: no resolve, no host
    assert lines[1] == '2 backend.test:8080 true backend.test'
