#!/usr/bin/env python3
"""Detection time of a failing peer: passive checks (hc.report() in
log_by_lua, issue 16) against active checks alone.

A backend nginx serves two loopback peers; one starts answering 503 (live
traffic and health checks alike) when a flag file appears.  The checker
nginx (1 worker) proxies a steady client load (--rate requests/s, round
robin over both peers) and checks them with interval 1000 ms, timeout 1000
ms, fall 3 (the seed's shape, faster); with --passive also passive = {fall =
3} and hc.report() (what bundles before issue 29 need; since then the C log
handler judges the requests and the call does nothing, so the same script
compares both).  The figure: seconds from the flag to the peer shown
DOWN, and the client requests that failed meanwhile.  Each mode runs
--repeat times.

Usage: NP_BUNDLE=<bundle> python3 bench/healthcheck/bench_detection.py
       [--rate 100] [--repeat 3]
Prints one JSON line.  Stops everything it started.
"""
import argparse
import http.client
import json
import os
import pathlib
import socket
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from common import Server, main_conf, wait_port  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def backend_conf(port, flag):
    return main_conf('''
    server {
        listen 127.22.0.1:%d;
        listen 127.22.0.2:%d;
        location / {
            if ($server_addr = 127.22.0.2) { set $bad "%s"; }
            if (-f $bad) { return 503; }
            return 200 "ok";
        }
    }''' % (port, port, flag), workers=1, affinity=False)


def checker_conf(bport, port, proxy, passive):
    return main_conf('''
    lua_shared_dict healthcheck 1m;
    upstream foo {
        server 127.22.0.1:%(b)d max_fails=0;
        server 127.22.0.2:%(b)d max_fails=0;
    }
    init_worker_by_lua_block {
        local hc = require "resty.upstream.healthcheck"
        assert(hc.spawn_checker{type = "http", shm = "healthcheck", upstream = "foo",
            http_req = "GET /health HTTP/1.0\\r\\n\\r\\n", interval = 1000, timeout = 1000,
            fall = 3, rise = 2, valid_statuses = {200}%(passive)s})
    }
    server {
        listen 127.0.0.1:%(proxy)d;
        %(report)s
        location / { proxy_pass http://foo; proxy_next_upstream off; }
    }
    server {
        listen 127.0.0.1:%(port)d;
        location = /status {
            content_by_lua_block { ngx.print(require("resty.upstream.healthcheck").status_page()) }
        }
    }''' % {'b': bport, 'port': port, 'proxy': proxy,
            'passive': ', passive = {fall = 3}' if passive else '',
            'report': 'log_by_lua_block { require("resty.upstream.healthcheck").report() }'
                      if passive else ''},
        workers=1, affinity=False)


def get(port, path):
    c = http.client.HTTPConnection('127.0.0.1', port, timeout=5)
    try:
        c.request('GET', path)
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


class Load(threading.Thread):
    """`rate` requests/s to the proxy; counts the failed ones."""

    def __init__(self, proxy, rate):
        super().__init__(daemon=True)
        self.proxy, self.rate = proxy, rate
        self.failed, self.stop = 0, threading.Event()

    def run(self):
        while not self.stop.wait(1.0 / self.rate):
            try:
                if get(self.proxy, '/x')[0] != 200:
                    self.failed += 1
            except OSError:
                self.failed += 1


def one_run(passive, rate):
    bport, port, proxy = free_port(), free_port(), free_port()
    tmp = tempfile.mkdtemp(prefix='np-det-')
    os.chmod(tmp, 0o755)                       # the workers stat the flag
    flag = pathlib.Path(tmp) / 'bad'
    backend = Server(backend_conf(bport, flag)).start()
    wait_port('127.22.0.2', bport)
    s = Server(checker_conf(bport, port, proxy, passive)).start(port)
    load = Load(proxy, rate)
    try:
        deadline = time.monotonic() + 10
        while get(port, '/status')[1].count(' UP') < 2:
            assert time.monotonic() < deadline, 'peers not UP'
            time.sleep(0.05)
        load.start()
        time.sleep(1.5)                        # steady traffic before the failure
        failed0 = load.failed
        flag.write_text('x')
        t0 = time.monotonic()
        while '127.22.0.2:%d DOWN' % bport not in get(port, '/status')[1]:
            assert time.monotonic() - t0 < 30, 'not DOWN'
            time.sleep(0.005)
        took = time.monotonic() - t0
        failed = load.failed - failed0
        return took, failed
    finally:
        load.stop.set()
        s.stop()
        backend.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rate', type=int, default=100)
    ap.add_argument('--repeat', type=int, default=3)
    a = ap.parse_args()
    result = {'bench': 'healthcheck_detection', 'rate_rps': a.rate,
              'interval_ms': 1000, 'fall': 3, 'passive_fall': 3}
    for mode, passive in (('active', False), ('passive', True)):
        runs = [one_run(passive, a.rate) for _ in range(a.repeat)]
        result[mode + '_detection_s'] = [round(t, 3) for t, _ in runs]
        result[mode + '_detection_median_s'] = round(statistics.median(t for t, _ in runs), 3)
        result[mode + '_failed_requests'] = [f for _, f in runs]
    print(json.dumps(result))


if __name__ == '__main__':
    main()
