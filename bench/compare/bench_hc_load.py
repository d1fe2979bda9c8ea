#!/usr/bin/env python3
"""Client throughput with the health checker running vs not: two front nginx
of the bundle (1 worker pinned to CPU 0), identical but for the checker
(aggressive: every 500 ms on all 20 peers), proxying to a backend nginx
listening on the 20 peers' addresses; wrk on CPU 1, alternating runs.
Prints one JSON line: medians and the ratio with/without."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from common import Server, alternate, main_conf, wait_port, wrk  # noqa: E402

PEERS = 20
PORT_ON, PORT_OFF, PORT_BACKEND = 18194, 18195, 18196


def addrs(n):
    return ['127.22.%d.%d:%d' % (1 + i // 250, 1 + i % 250, PORT_BACKEND) for i in range(n)]


def backend_conf(peers):
    listens = '\n'.join('        listen %s;' % a for a in peers)
    return main_conf('''
    server {
%s
        location / { return 200 "0123456789abcdef0123456789abcdef\\n"; }
    }''' % listens, affinity=False)


def front_conf(port, peers, checker):
    servers = '\n'.join('        server %s;' % a for a in peers)
    spawn = '''
    init_worker_by_lua_block {
        local ok, err = require("resty.upstream.healthcheck").spawn_checker({
            shm = "healthcheck", upstream = "app", type = "http",
            http_req = "GET /health HTTP/1.0\\r\\nHost: app\\r\\n\\r\\n",
            interval = 500, timeout = 1000, fall = 3, rise = 2,
            valid_statuses = {200}, concurrency = 10,
        })
        if not ok then ngx.log(ngx.ERR, "spawn: ", err) end
    }''' if checker else ''
    return main_conf('''
    lua_shared_dict healthcheck 1m;
    upstream app {
%s
        keepalive 32;
    }
%s
    server {
        listen 127.0.0.1:%d;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }''' % (servers, spawn, port))


def run(runs=5, seconds=4):
    peers = addrs(PEERS)
    backend = Server(backend_conf(peers)).start()
    wait_port(peers[0].split(':')[0], PORT_BACKEND)
    on = off = None
    try:
        on = Server(front_conf(PORT_ON, peers, True)).start(PORT_ON)
        off = Server(front_conf(PORT_OFF, peers, False)).start(PORT_OFF)
        for port in (PORT_ON, PORT_OFF):
            wrk('http://127.0.0.1:%d/' % port, seconds=1, cpu=1)
        (m_on, m_off), raw = alternate(
            runs,
            lambda: wrk('http://127.0.0.1:%d/' % PORT_ON, seconds=seconds, cpu=1),
            lambda: wrk('http://127.0.0.1:%d/' % PORT_OFF, seconds=seconds, cpu=1))
        checks = open(on.dir / 'logs' / 'error.log').read().count('failed to spawn')
    finally:
        for s in (on, off, backend):
            if s:
                s.stop()
    assert checks == 0, 'the checker did not start'
    return {'bench': 'healthcheck-client-throughput', 'peers': PEERS, 'interval_ms': 500,
            'checker_on_rps': m_on, 'checker_off_rps': m_off,
            'ratio': round(m_on / m_off, 3), 'runs': raw}


def main():
    r = run(int(os.environ.get('BENCH_RUNS', '5')), int(os.environ.get('BENCH_SECONDS', '4')))
    print(json.dumps(r))
    return r


if __name__ == '__main__':
    main()
