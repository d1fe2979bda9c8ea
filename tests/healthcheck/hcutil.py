"""Helpers for the health-checker tests: a whole nginx.conf with upstreams,
checkers and a status server (/status, /metrics, each worker's own view at
/local, shm reads at /shm, a proxy at /?u=UPSTREAM), and waits on what it
shows.  Backends, certificates and parsers come from tests/support."""
from support.confs import STATUS_LOCATION, conf_wrap
from support.net import http_get, wait_for
from support.probes import peer_states


STATUS_SERVER = r'''
    server {
        listen 127.0.0.1:%(port)d reuseport;
%(status_location)s
        location = /metrics {
            default_type text/plain;
            content_by_lua_block {
                local hc = require "resty.upstream.healthcheck"
                local args = ngx.req.get_uri_args()
                local s, err = hc.prometheus_status_page(
                    args.extended and {extended = true} or nil)
                if not s then
                    ngx.status = 500
                    ngx.say(err)
                    return
                end
                ngx.print(s)
            }
        }
        location = /local {
            # this worker's view of its peers: "pid name up|down" lines
            default_type text/plain;
            content_by_lua_block {
                local up = require "ngx.upstream"
                local u = ngx.var.arg_u
                ngx.say("pid ", ngx.worker.pid())
                for _, get in ipairs({up.get_primary_peers, up.get_backup_peers}) do
                    local peers = get(u) or {}
                    for _, p in ipairs(peers) do
                        ngx.say(p.name, " ", p.down and "down" or "up")
                    end
                end
            }
        }
        location = /shm {
            default_type text/plain;
            content_by_lua_block {
                local d = ngx.shared[ngx.var.arg_shm or "healthcheck"]
                ngx.say(tostring(d:get(ngx.var.arg_key)))
            }
        }
        location / {
            proxy_pass http://$arg_u;
            proxy_next_upstream off;
            proxy_connect_timeout 2s;
            proxy_read_timeout 3s;
        }
    }
'''


def hc_conf(upstreams, checkers, port, workers=1, extra_http='', main='', shm_size='8m',
            error_level='info', init=''):
    """A whole nginx.conf: upstreams, checkers in init_worker, the status
    server; `init` is Lua run in init_by_lua after the module is loaded."""
    http = '''
    lua_shared_dict healthcheck %s;
    lua_socket_log_errors off;
%s
%s
    init_by_lua_block {
        local hc = require "resty.upstream.healthcheck"
%s
    }
    init_worker_by_lua_block {
%s
    }
%s
''' % (shm_size, extra_http, '\n'.join(upstreams), init, '\n'.join(checkers),
       STATUS_SERVER % {'port': port, 'status_location': STATUS_LOCATION})
    return conf_wrap(http, workers=workers, main=main, error_level=error_level)


def wait_state(port, addr, state, timeout=10):
    wait_for(lambda: peer_states(port).get(addr) == state, timeout=timeout,
             what='%s to be %s; status:\n%s' % (addr, state, '(see below)'))


def local_views(port, upstream, want_workers, timeout=10):
    """Ask until every worker (by pid) answered /local; {pid: {addr: up|down}}."""
    views = {}

    def collect():
        st, _, body = http_get('127.0.0.1', port, '/local?u=' + upstream)
        lines = body.decode().splitlines()
        pid = int(lines[0].split()[1])
        views[pid] = dict(l.split() for l in lines[1:])
        return len(views) >= want_workers
    wait_for(collect, timeout=timeout, interval=0.005, what='all workers to answer')
    return views
