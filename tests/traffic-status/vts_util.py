"""Helpers for the traffic-status tests: raw requests and keep-alive
connections, the status server's JSON, an nginx of plain backends."""
import re
import socket
import threading

from support import probes
from support.confs import conf_wrap
from support.net import free_port, http_get, raw_request  # noqa: F401 (raw_request: re-exported)


def promtool(text):
    """promtool check metrics as the older tests expect it: (0 when clean,
    else 1; the output).  New tests use support.probes.promtool."""
    ok, out = probes.promtool(text)
    return (0 if ok else 1), out


def req(path, host='counted.test', extra=b''):
    return (b'GET ' + path.encode() + b' HTTP/1.1\r\nHost: ' + host.encode()
            + b'\r\n' + extra + b'Connection: close\r\n\r\n')


def status_of(resp):
    return int(resp.split(b' ', 2)[1])


def statuses(fport, path, n, host='a.test'):
    """the statuses of n requests for path, one connection each"""
    return [status_of(raw_request(fport, req(path, host=host))) for _ in range(n)]


def read_all(s):
    """everything socket s receives until the peer closes"""
    chunks = []
    while True:
        c = s.recv(1 << 16)
        if not c:
            return b''.join(chunks)
        chunks.append(c)


def keepalive_requests(port, raws, timeout=30):
    """Send requests one after another on keep-alive connections (a new one
    whenever the server closes, e.g. after keepalive_requests).

    Returns the number of responses read."""
    n = 0
    s = f = None
    try:
        for raw in raws:
            if s is None:
                s = socket.create_connection(('127.0.0.1', port), timeout=timeout)
                f = s.makefile('rb')
            s.sendall(raw)
            line = f.readline()
            if not line:
                raise AssertionError('connection closed before a response')
            length, close = 0, False
            while True:
                h = f.readline()
                if h in (b'\r\n', b'\n', b''):
                    break
                k, _, v = h.partition(b':')
                k = k.strip().lower()
                if k == b'content-length':
                    length = int(v.strip())
                elif k == b'connection' and v.strip().lower() == b'close':
                    close = True
            f.read(length)
            n += 1
            if close:
                f.close()
                s.close()
                s = f = None
    finally:
        if s is not None:
            f.close()
            s.close()
    return n


def get(port, path, host='status.test'):
    """(status, headers as text, body bytes); handles chunked bodies."""
    st, headers, body = http_get('127.0.0.1', port, path, headers={'Host': host})
    head = '\r\n'.join('%s: %s' % (k.title(), v) for k, v in headers.items())
    return st, head, body


def dechunk(resp):
    """(head, body) of a raw response read to its end; a chunked body joined."""
    head, _, body = resp.partition(b'\r\n\r\n')
    if b'transfer-encoding: chunked' not in head.lower():
        return head, body
    out, i = [], 0
    while True:
        j = body.index(b'\r\n', i)
        n = int(body[i:j], 16)
        if n == 0:
            return head, b''.join(out)
        out.append(body[j + 2:j + 2 + n])
        i = j + 2 + n + 2


def get_json(port, path='/status/format/json'):
    """The JSON output at path, parsed strictly (UTF-8, no duplicate keys)."""
    return probes.get_json(port, path, headers={'Host': 'status.test'})


# nginx 1.29+ answers 400 to a Host header outside RFC 3986's reg-name
# characters, so hostile server-zone keys come in another header: X-Host,
# which Lua makes the request's Host before the log phase counts it
# (lua-nginx-module's own Host check refuses only '/', NUL and '..').  A
# server-level set_by_lua runs in the server-rewrite phase, before a
# location's `return`.
HOST_FROM_HEADER = """
        set_by_lua_block $np_host_from_header {
            local h = ngx.var.http_x_host
            if h then ngx.req.set_header("Host", h) end
            return ""
        }"""


def hostile_host_request(host, extra=b''):
    """A request whose server-zone key (with filter_by_host) is `host`: any bytes."""
    return b'GET / HTTP/1.1\r\nHost: keys.test\r\nX-Host: ' + host + b'\r\n' + extra + b'\r\n'


def counted_and_status(fport, sport, http='', counted='', status='', workers=1):
    """A whole nginx.conf: `http` directives, server default.test on fport
    (its own `counted` directives; / answers ok) and an uncounted status
    server on sport (/status displays; `status` adds directives)."""
    return conf_wrap(f"""
{http}
    server {{
        listen 127.0.0.1:{fport};
        server_name default.test;
        {counted}
        location / {{ return 200 "ok\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{sport};
        server_name status.test;
        vhost_traffic_status off;
        location /status {{ vhost_traffic_status_display; }}
        {status}
    }}
""", workers=workers)


def backend_conf(ports):
    """An nginx without the module: one server per port answering its name."""
    servers = []
    for i, p in enumerate(ports):
        servers.append(f"""
    server {{
        listen 127.0.0.1:{p};
        location / {{ return 200 "backend{i}\\n"; }}
        location ~ /fail$ {{ return 503; }}
        location ~ /slow$ {{
            content_by_lua_block {{ ngx.sleep(tonumber(ngx.var.arg_t)) ngx.say("slow") }}
        }}
    }}""")
    return conf_wrap(''.join(servers))


def many_requests(port, raws, conns=4):
    """Send raws over `conns` parallel keep-alive connections, one request at a
    time on each (no pipelining: nginx core's parser does deliberately
    unaligned loads on pipelined input, which the UBSan build reports).
    Each raw must not contain Connection: close. Returns responses read."""
    parts = [raws[i::conns] for i in range(conns)]
    counts = [0] * conns

    def run(i):
        counts[i] = keepalive_requests(port, parts[i])
    threads = [threading.Thread(target=run, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


def assert_nginx_t_fails(nginx_factory, http_extra, message):
    """`nginx -t` of a small config with http_extra fails with message and
    the file and line."""
    text = conf_wrap(f"""
    vhost_traffic_status_zone;
    {http_extra}
    server {{ listen 127.0.0.1:{free_port()}; }}
""")
    r = nginx_factory(text, start=False).test_config()
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert re.search(r'nginx\.conf:\d+', r.stderr), r.stderr
