#!/usr/bin/env python3
"""Health-checker benchmark: CPU used by resty.upstream.healthcheck for 1000
peers checked every 2 s (goal: under 5 % of one core), and the shm needed per
peer.

A backend nginx listens on 1000 loopback addresses (127.21.a.b:PORT) and
answers /health with 204.  The checker nginx (1 worker by default) runs the
seed's checker options against `upstream big` of those 1000 peers.  In the
same run, a baseline nginx with the same config but no checker is measured the
same way; the figure is the difference of the two CPU times over the window
(utime+stime of master and workers from /proc), as a percentage of one core.

shm per peer: (capacity - free_space) of the checker's lua_shared_dict after a
few rounds, minus the same figure for an empty dict, divided by the number of
peers (healthy peers; a failing peer adds one counter per failure reason).

With --jitter MS each peer's check starts at its own offset in [0, MS) after
the round's start (issue 16): the same checks, spread instead of in bursts.

With --pair MS (issue 29) two checker nginx run side by side against the same
backend, one without jitter and one with `jitter = MS`, measured over the
same --repeat windows: CPU per check of each and their ratio, so the load of
a shared machine weighs on both alike (goal: jittered <= 1.2x).

Usage: NP_BUNDLE=<bundle> python3 bench/healthcheck/bench_healthcheck.py
       [--peers 1000] [--interval 2000] [--window 20] [--workers 1] [--jitter 0]
       [--strict] [--pair MS [--repeat 3]]
Prints one JSON line.  Stops everything it started.
"""
import argparse
import json
import os
import sys
import time
import http.client

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from common import Server, main_conf, wait_port  # noqa: E402

import socket  # noqa: E402

HZ = os.sysconf('SC_CLK_TCK')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def addrs(n, port):
    return ['127.21.%d.%d:%d' % (1 + i // 250, 1 + i % 250, port) for i in range(n)]


def backend_conf(peers):
    listens = '\n'.join('        listen %s;' % a for a in peers)
    return main_conf('''
    server {
%s
        location / { return 204; }
    }''' % listens, workers=1, affinity=False, main='worker_rlimit_nofile 8192;')


def checker_conf(peers, port, interval, workers, with_checker, shm='64m', jitter=0):
    servers = '\n'.join('        server %s;' % a for a in peers)
    checker = '''
    init_worker_by_lua_block {
        local hc = require "resty.upstream.healthcheck"
        local ok, err = hc.spawn_checker({
            shm = "healthcheck", upstream = "big", type = "http",
            http_req = "GET /health HTTP/1.0\\r\\nHost: big.internal\\r\\n\\r\\n",
            interval = %d, timeout = 1000, fall = 3, rise = 2,
            valid_statuses = {200, 204}, concurrency = 10, jitter = %d,
        })
        if not ok then ngx.log(ngx.ERR, "failed to spawn health checker: ", err) end
    }''' % (interval, jitter) if with_checker else ''
    return main_conf('''
    lua_shared_dict healthcheck %s;
    lua_shared_dict empty %s;
    init_by_lua_block { require "resty.upstream.healthcheck" }
    upstream big {
%s
    }
%s
    server {
        listen 127.0.0.1:%d;
        location = /shm {
            content_by_lua_block {
                local d, e = ngx.shared.healthcheck, ngx.shared.empty
                ngx.say(d:capacity() - d:free_space(), " ", e:capacity() - e:free_space(),
                        " ", #d:get_keys(0))
            }
        }
        location = /checks {
            content_by_lua_block {
                local s = require("resty.upstream.healthcheck").prometheus_status_page({extended = true})
                local n = 0
                for v in s:gmatch("nginx_upstream_peer_checks_total{[^}]*} (%%d+)") do n = n + tonumber(v) end
                ngx.print(n)
            }
        }
        location = /status {
            content_by_lua_block {
                ngx.print(require("resty.upstream.healthcheck").status_page())
            }
        }
    }''' % (shm, shm, servers, checker, port), workers=workers, affinity=False,
        main='worker_rlimit_nofile 8192;')


def proc_cpu(master):
    """utime+stime (seconds) of the master and its children."""
    pids = [master]
    for p in os.listdir('/proc'):
        if p.isdigit():
            try:
                with open('/proc/%s/stat' % p) as f:
                    st = f.read().rsplit(')', 1)[1].split()
                if int(st[1]) == master:
                    pids.append(int(p))
            except OSError:
                pass
    total = 0
    for p in pids:
        try:
            with open('/proc/%d/stat' % p) as f:
                st = f.read().rsplit(')', 1)[1].split()
            total += int(st[11]) + int(st[12])
        except OSError:
            pass
    return total / HZ


def get(port, path):
    c = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
    c.request('GET', path)
    r = c.getresponse()
    body = r.read().decode()
    c.close()
    return body


def measure(peers, interval, workers, with_checker, window, jitter=0):
    port = free_port()
    s = Server(checker_conf(peers, port, interval, workers, with_checker,
                            jitter=jitter)).start(port)
    try:
        # warm up: the first rounds (and JIT) before the window
        time.sleep(2 * (interval + jitter) / 1000 + 1)
        checks0 = int(get(port, '/checks'))
        c0, t0 = proc_cpu(s.pid()), time.monotonic()
        time.sleep(window)
        c1, t1 = proc_cpu(s.pid()), time.monotonic()
        checks = int(get(port, '/checks')) - checks0
        shm = get(port, '/shm').split()
        status = get(port, '/status')
        return {
            'cpu_s': c1 - c0, 'wall_s': t1 - t0, 'checks': checks,
            'shm_used': int(shm[0]), 'shm_empty': int(shm[1]), 'keys': int(shm[2]),
            'up': status.count(' UP\n'),
        }
    finally:
        s.stop()


def pair_windows(peers, interval, jitter, window, repeat):
    """The two checkers side by side: one row per window."""
    servers = {}
    rows = []
    try:
        for j in (0, jitter):
            port = free_port()
            conf = checker_conf(peers, port, interval, 1, True, jitter=j)
            servers[j] = (Server(conf).start(port), port)
        time.sleep(2 * (interval + jitter) / 1000 + 1)
        for _ in range(repeat):
            before = {j: (int(get(p, '/checks')), proc_cpu(s.pid())) for j, (s, p) in servers.items()}
            t0 = time.monotonic()
            time.sleep(window)
            wall = time.monotonic() - t0
            row = {}
            for j, (s, p) in servers.items():
                checks = int(get(p, '/checks')) - before[j][0]
                cpu = proc_cpu(s.pid()) - before[j][1]
                row['jitter_%d' % j] = {'checks': checks, 'pct_of_core': round(100 * cpu / wall, 2),
                                        'us_per_check': round(1e6 * cpu / max(checks, 1))}
            row['ratio_per_check'] = round(row['jitter_%d' % jitter]['us_per_check']
                                           / max(row['jitter_0']['us_per_check'], 1), 2)
            rows.append(row)
        warn = sum((s.dir / 'logs' / 'error.log').read_text().count('[warn]') for s, _ in servers.values())
        return rows, warn
    finally:
        for s, _ in servers.values():
            s.stop()


def main_pair(a, peers):
    rows, warn = pair_windows(peers, a.interval, a.pair, a.window, a.repeat)
    ratios = sorted(r['ratio_per_check'] for r in rows)
    print(json.dumps({'bench': 'healthcheck-jitter-pair', 'peers': a.peers, 'interval_ms': a.interval,
                      'jitter_ms': a.pair, 'window_s': a.window, 'windows': rows,
                      'median_ratio_per_check': ratios[len(ratios) // 2],
                      'warn_lines': warn, 'goal_ratio': 1.2}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--peers', type=int, default=1000)
    ap.add_argument('--interval', type=int, default=2000)
    ap.add_argument('--window', type=float, default=20)
    ap.add_argument('--workers', type=int, default=1)
    ap.add_argument('--jitter', type=int, default=0)
    ap.add_argument('--strict', action='store_true')
    ap.add_argument('--pair', type=int, default=0, metavar='MS',
                    help='jitter MS and none side by side: CPU per check')
    ap.add_argument('--repeat', type=int, default=3, help='windows of --pair')
    a = ap.parse_args()

    bport = free_port()
    peers = addrs(a.peers, bport)
    backend = Server(backend_conf(peers)).start()
    wait_port(peers[0].split(':')[0], bport)

    try:
        if a.pair:
            return main_pair(a, peers)
        base = measure(peers, a.interval, a.workers, False, a.window)
        hc = measure(peers, a.interval, a.workers, True, a.window, jitter=a.jitter)
    finally:
        backend.stop()

    cpu_pct = 100.0 * (hc['cpu_s'] - base['cpu_s']) / hc['wall_s']
    per_peer = (hc['shm_used'] - hc['shm_empty']) / a.peers
    result = {
        'bench': 'healthcheck',
        'peers': a.peers, 'interval_ms': a.interval, 'workers': a.workers,
        'jitter_ms': a.jitter,
        'window_s': round(hc['wall_s'], 1),
        'checker_cpu_pct_of_one_core': round(cpu_pct, 2),
        'baseline_cpu_s': round(base['cpu_s'], 3), 'checker_cpu_s': round(hc['cpu_s'], 3),
        'shm_bytes_per_peer': round(per_peer),
        'shm_keys_per_peer': round(hc['keys'] / a.peers, 2),
        'peers_up': hc['up'],
        'checks_in_window': hc['checks'],
        'rounds_in_window': round(hc['checks'] / a.peers, 2),
        'goal_cpu_pct': 5.0,
        'goal_met': cpu_pct < 5.0 and hc['up'] == a.peers,
    }
    print(json.dumps(result))
    if a.strict and not result['goal_met']:
        sys.exit(1)


if __name__ == '__main__':
    main()
