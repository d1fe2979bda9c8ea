#!/usr/bin/env python3
"""Time to render the merged /metrics page (the default config's: health
checks + traffic status, Prometheus text) with 10, 100 and 1000 upstream
peers, all checked and all with traffic.  Baseline, measured in the same run
on the same server and connection: a trivial content_by_lua endpoint.
Prints one JSON line per size: medians of 30 requests and their ratio."""
import http.client
import json
import os
import re
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from common import Server, main_conf, wait_port  # noqa: E402

PORT_FRONT, PORT_BACKEND = 18197, 18198
CONF_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'conf')


def addrs(n):
    return ['127.23.%d.%d:%d' % (1 + i // 250, 1 + i % 250, PORT_BACKEND) for i in range(n)]


def metrics_location():
    """The default config's /metrics location, verbatim."""
    text = open(os.path.join(CONF_DIR, 'nginx.conf')).read()
    start = text.index('        location = /metrics {')
    depth, i = 0, start
    while True:
        if text[i] == '{':
            depth += 1
        elif text[i] == '}':
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
        i += 1


def front_conf(peers):
    servers = '\n'.join('        server %s;' % a for a in peers)
    return main_conf('''
    lua_shared_dict healthcheck 16m;
    vhost_traffic_status_zone shared:vhost_traffic_status:16m;
    vhost_traffic_status_filter_by_host on;
    upstream big {
%s
    }
    init_worker_by_lua_block {
        local ok, err = require("resty.upstream.healthcheck").spawn_checker({
            shm = "healthcheck", upstream = "big", type = "http",
            http_req = "GET /health HTTP/1.0\\r\\nHost: big\\r\\n\\r\\n",
            interval = 2000, timeout = 1000, fall = 3, rise = 2,
            valid_statuses = {200}, concurrency = 10,
        })
        if not ok then ngx.log(ngx.ERR, "spawn: ", err) end
    }
    server {
        listen 127.0.0.1:%d;
        location / { proxy_pass http://big; }
        location = /status/format/prometheus {
            internal;
            vhost_traffic_status_display;
            vhost_traffic_status_display_format prometheus;
        }
        location = /trivial { content_by_lua_block { ngx.print("ok\\n") } }
%s
    }''' % (servers, PORT_FRONT, metrics_location()), main='worker_rlimit_nofile 8192;')


def backend_conf(peers):
    listens = '\n'.join('        listen %s;' % a for a in peers)
    return main_conf('''
    server {
%s
        location / { return 200 "ok\\n"; }
    }''' % listens, affinity=False, main='worker_rlimit_nofile 8192;')


def up_peers(text):
    return len(set(re.findall(r'nginx_upstream_status_info\{name="big",endpoint="([^"]+)",'
                              r'status="UP"', text)))


def timed(conn, path, n):
    times, body = [], b''
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request('GET', path)
        body = conn.getresponse().read()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), body


def one(n_peers, samples=30):
    peers = addrs(n_peers)
    backend = Server(backend_conf(peers)).start()
    wait_port(peers[0].split(':')[0], PORT_BACKEND)
    front = None
    try:
        front = Server(front_conf(peers)).start(PORT_FRONT)
        # traffic to every peer (round robin), keep-alive, pipelined in batches
        for i in range(0, n_peers, 100):
            k = min(100, n_peers - i)
            raw = b''.join(b'GET /x HTTP/1.1\r\nHost: h\r\n%s\r\n'
                           % (b'Connection: close\r\n' if j == k - 1 else b'') for j in range(k))
            with socket.create_connection(('127.0.0.1', PORT_FRONT), timeout=30) as s:
                s.sendall(raw)
                while s.recv(65536):
                    pass
        c = http.client.HTTPConnection('127.0.0.1', PORT_FRONT, timeout=30)
        # wait for the first round to cover every peer
        deadline = time.monotonic() + 30
        while True:
            c.request('GET', '/metrics')
            text = c.getresponse().read().decode()
            if up_peers(text) >= n_peers or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        timed(c, '/trivial', 5)
        timed(c, '/metrics', 3)
        base_ms, _ = timed(c, '/trivial', samples)
        ms, body = timed(c, '/metrics', samples)
        text = body.decode()
        up = up_peers(text)
        vts_peers = len(set(re.findall(
            r'nginx_vts_upstream_requests_total\{upstream="big",backend="([^"]+)"', text)))
    finally:
        if front:
            front.stop()
        backend.stop()
    return {'bench': 'metrics-render', 'peers': n_peers, 'metrics_ms': round(ms, 3),
            'trivial_lua_ms': round(base_ms, 3), 'ratio': round(ms / base_ms, 1),
            'bytes': len(body), 'peers_up_in_output': up, 'vts_peers_in_output': vts_peers}


def run(sizes=(10, 100, 1000)):
    return [one(n) for n in sizes]


def main():
    out = run()
    for r in out:
        print(json.dumps(r))
    return out


if __name__ == '__main__':
    main()
