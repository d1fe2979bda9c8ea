"""nginx.conf snippets: a whole config around an http{} body, upstream
blocks, a health checker's spawn_checker() call, the status-page location."""

HEALTH_REQUEST = r'"GET /health HTTP/1.0\r\nHost: %s\r\n\r\n"'


def conf_wrap(http_body, workers=1, main='', events='', error_level='info'):
    """A whole nginx.conf around an http{} body."""
    return f"""
daemon on;
master_process on;
worker_processes {workers};
error_log logs/error.log {error_level};
pid logs/nginx.pid;
{main}
events {{ worker_connections 1024; {events} }}
http {{
    access_log off;
    include mime.types;
    default_type application/octet-stream;
{http_body}
}}
"""


def upstream_block(name, primary, backup=(), extra=''):
    lines = ['    upstream %s {' % name]
    for a in primary:
        lines.append('        server %s;' % a)
    for a in backup:
        lines.append('        server %s backup;' % a)
    if extra:
        lines.append('        ' + extra)
    lines.append('    }')
    return '\n'.join(lines)


class LuaExpr(str):
    """A Lua expression written as is (not quoted) by checker_lua."""


def lua_value(v):
    """A Python value as a Lua expression (strings quoted)."""
    if isinstance(v, bool):
        return 'true' if v else 'false'
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return '{' + ', '.join(lua_value(x) for x in v) + '}'
    if isinstance(v, LuaExpr):
        return str(v)
    return '"%s"' % str(v).replace('\\', '\\\\').replace('"', '\\"')


def checker_lua(upstream, shm='healthcheck', **opts):
    """A spawn_checker call for init_worker_by_lua; opts are Python values or
    LuaExpr.  A failure is logged as "failed to spawn health checker for
    <upstream>: <err>"."""
    opts.setdefault('type', 'http')
    opts.setdefault('http_req', LuaExpr(HEALTH_REQUEST % 'hc'))
    opts['shm'] = shm
    opts['upstream'] = upstream
    body = ',\n'.join('            %s = %s' % (k, lua_value(v)) for k, v in opts.items())
    return '''
        do
            local hc = require "resty.upstream.healthcheck"
            local ok, err = hc.spawn_checker({
%s
            })
            if not ok then
                ngx.log(ngx.ERR, "failed to spawn health checker for %s: ", err)
            end
        end''' % (body, upstream)


# hc.status_page() at /status.
STATUS_LOCATION = '''
        location = /status {
            default_type text/plain;
            content_by_lua_block { ngx.print(require("resty.upstream.healthcheck").status_page()) }
        }'''
