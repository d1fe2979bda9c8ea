"""Helpers for the ngx.upstream tests: nginx configs with backends on
loopback, and an /eval endpoint that runs a Lua chunk in a worker and
returns pcall's results as JSON."""
import collections
import json
import time

from support.net import free_port, http_get

# A tiny JSON encoder (the bundle has no cjson) and the /eval location.  The
# chunk gets `up` = require "ngx.upstream"; the answer is the array
# [ok, results...] of pcall with nil as null.
EVAL_LOCATION = r"""
    location = /eval {
        client_body_buffer_size 64k;
        client_max_body_size 64k;
        content_by_lua_block {
            local enc
            local function str(s)
                return '"' .. s:gsub('[%c"\\]', function(c)
                    return string.format("\\u%04x", c:byte())
                end) .. '"'
            end
            enc = function(v)
                local t = type(v)
                if v == nil then return "null" end
                if t == "boolean" then return tostring(v) end
                if t == "number" then
                    if v == math.floor(v) and math.abs(v) < 2^53 then
                        return string.format("%d", v)
                    end
                    return tostring(v)
                end
                if t == "string" then return str(v) end
                if t == "table" then
                    local out = {}
                    if v.__n then
                        for i = 1, v.__n do out[i] = enc(v[i]) end
                        return "[" .. table.concat(out, ",") .. "]"
                    end
                    if next(v) == nil then return "[]" end
                    if v[1] ~= nil then
                        for i = 1, #v do out[i] = enc(v[i]) end
                        return "[" .. table.concat(out, ",") .. "]"
                    end
                    for k, x in pairs(v) do
                        out[#out + 1] = str(tostring(k)) .. ":" .. enc(x)
                    end
                    table.sort(out)
                    return "{" .. table.concat(out, ",") .. "}"
                end
                return str("<" .. t .. ">")
            end
            local function pack(...)
                return { __n = select("#", ...), ... }
            end
            ngx.req.read_body()
            local code = ngx.req.get_body_data() or ""
            local f, err = loadstring(
                "local up = require 'ngx.upstream'\n" .. code, "=eval")
            if not f then
                ngx.status = 500
                ngx.say(err)
                return
            end
            ngx.header["X-Worker"] = ngx.worker.pid()
            ngx.say(enc(pack(pcall(f))))
        }
    }
"""


def backend_servers(backends, addrs=('127.0.0.1',)):
    """server{} blocks answering with their name: backends is {name: port}."""
    out = []
    for name, port in backends.items():
        listens = ''.join('listen %s:%d;' % (a, port) for a in addrs)
        out.append("""
    server {
        %s
        location / { return 200 "%s"; }
    }""" % (listens, name))
    return '\n'.join(out)


def front_server(port, locations, reuseport=False):
    return """
    server {
        listen 127.0.0.1:%d%s;
        add_header X-Worker $pid always;
        add_header X-Peer $upstream_addr always;
        proxy_connect_timeout 2s;
        proxy_read_timeout 5s;
        %s
        %s
    }""" % (port, ' reuseport' if reuseport else '', EVAL_LOCATION, locations)


def lua(port, code, timeout=10):
    """Run a Lua chunk in some worker: returns (pcall results list, worker pid)."""
    status, headers, body = http_get('127.0.0.1', port, '/eval', method='POST',
                                     body=code.encode(), timeout=timeout,
                                     headers={'Connection': 'close'})
    assert status == 200, body
    return json.loads(body), int(headers['x-worker'])


def lua_ok(port, code):
    res, _ = lua(port, code)
    assert res[0] is True, 'Lua error: %r' % (res,)
    return res[1:]


def get(port, path):
    """GET through the front server: (status, body text, worker pid)."""
    status, headers, body = http_get('127.0.0.1', port, path,
                                     headers={'Connection': 'close'})
    return status, body.decode(errors='replace'), int(headers.get('x-worker', 0))


def hits(port, path, n):
    """Counter of the backends that answered n requests to path."""
    c = collections.Counter()
    for _ in range(n):
        status, body, _ = get(port, path)
        c[body if status == 200 else status] += 1
    return c


def hits_by_worker(port, path, workers, per_worker, timeout=30):
    """{worker pid: Counter(backend)} until every worker served per_worker."""
    seen = {pid: collections.Counter() for pid in workers}
    deadline = time.monotonic() + timeout
    while min(sum(c.values()) for c in seen.values()) < per_worker:
        if time.monotonic() > deadline:
            raise AssertionError('not every worker got %d requests: %r'
                                 % (per_worker, seen))
        status, body, pid = get(port, path)
        if pid in seen:
            seen[pid][body if status == 200 else status] += 1
    return seen


def until_every_worker_sees(port, path, workers, backend, timeout=30):
    """Request until each worker has been answered by backend at least once
    (a shared zone's round robin is global, so one worker's share can be
    all one peer for a while); returns {pid: Counter}."""
    seen = {pid: collections.Counter() for pid in workers}
    deadline = time.monotonic() + timeout
    while not all(c[backend] for c in seen.values()):
        if time.monotonic() > deadline:
            raise AssertionError('not every worker reached %s: %r' % (backend, seen))
        status, body, pid = get(port, path)
        if pid in seen:
            seen[pid][body if status == 200 else status] += 1
    return seen


def free_ports(n):
    ports = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)
