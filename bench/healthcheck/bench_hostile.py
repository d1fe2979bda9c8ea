#!/usr/bin/env python3
"""Health-checker benchmark with hostile neighbours: 1000 peers of which 10%
trickle their status line (one byte every 0.3 s, never a newline) and 10%
accept and never answer (tests/support/hostile.py); the rest answer 204
(a backend nginx, as in bench_healthcheck.py), and one healthy peer, served
by a Hostile in mode 'ok', is killed after the first full round.

The checker uses bench_healthcheck.py's options (interval 2 s, timeout 1 s,
fall 3, concurrency 10).  Figures:
  - round duration (from the per-peer check counters in the shm, polled every
    0.2 s: a round is the 1000 checks between two plateaus) against the spec's
    bound ceil(peers / concurrency) x 3 x timeout;
  - detection time of the killed healthy peer (kill -> its shm state is DOWN)
    against fall x interval and against fall x (interval + round);
  - checker CPU: utime+stime of master and workers over the run, minus the
    same config without a checker polled the same way, in % of one core;
  - the worker's largest RSS.

Usage: NP_BUNDLE=<bundle> python3 bench/healthcheck/bench_hostile.py
       [--peers 1000] [--interval 2000] [--rounds 4]
Prints one JSON line.  Stops everything it started.
"""
import argparse
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..'))
sys.path.insert(0, os.path.join(HERE, '..', '..', 'tests', 'support'))
sys.path.insert(0, HERE)
from common import Server, main_conf, wait_port  # noqa: E402
from bench_healthcheck import addrs, backend_conf, free_port, get, proc_cpu  # noqa: E402
from hostile import Hostile  # noqa: E402

TIMEOUT_MS, FALL, CONCURRENCY = 1000, 3, 10


def conf(peers, port, interval, with_checker):
    servers = '\n'.join('        server %s;' % a for a in peers)
    checker = '''
    init_worker_by_lua_block {
        local hc = require "resty.upstream.healthcheck"
        local ok, err = hc.spawn_checker({
            shm = "healthcheck", upstream = "big", type = "http",
            http_req = "GET /health HTTP/1.0\\r\\nHost: big.internal\\r\\n\\r\\n",
            interval = %d, timeout = %d, fall = %d, rise = 2,
            valid_statuses = {200, 204}, concurrency = %d,
        })
        if not ok then ngx.log(ngx.ERR, "failed to spawn health checker: ", err) end
    }''' % (interval, TIMEOUT_MS, FALL, CONCURRENCY) if with_checker else ''
    return main_conf('''
    lua_shared_dict healthcheck 64m;
    lua_socket_log_errors off;
    init_by_lua_block { require "resty.upstream.healthcheck" }
    upstream big {
%s
    }
%s
    server {
        listen 127.0.0.1:%d;
        location = /poll {
            # "checks-done state-of-arg_peer" from the shm: cheap (no render)
            content_by_lua_block {
                local keys = require "resty.upstream.healthcheck.keys"
                local d = ngx.shared.healthcheck
                local n = 0
                for _, p in ipairs(require("ngx.upstream").get_primary_peers("big")) do
                    n = n + (d:get(keys.peer_key("checks", "big", "p", p.name)) or 0)
                end
                local st = d:get(keys.peer_key("state", "big", "p", ngx.var.arg_peer or ""))
                ngx.print(n, " ", tostring(st))
            }
        }
    }''' % (servers, checker, port), workers=1, affinity=False,
        main='worker_rlimit_nofile 8192;')


def worker_rss_kb(master):
    best = 0
    for p in os.listdir('/proc'):
        if not p.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % p) as f:
                if int(f.read().rsplit(')', 1)[1].split()[1]) != master:
                    continue
            with open('/proc/%s/status' % p) as f:
                for line in f:
                    if line.startswith('VmRSS:'):
                        best = max(best, int(line.split()[1]))
        except OSError:
            pass
    return best


def poll(port, victim):
    checks, state = get(port, '/poll?peer=' + victim).split()
    return int(checks), state


def rounds_from(samples, n):
    """[(start, end)] of the complete rounds in [(t, checks)] samples."""
    out, k, start = [], 0, None
    for t, c in samples:
        if start is None and c > k * n:
            start = t
        if start is not None and c >= (k + 1) * n:
            out.append((start, t))
            k, start = k + 1, None
            if c > k * n:
                start = t
    return out


def run(peers, victim, interval, want_rounds, with_checker, window=None):
    port = free_port()
    s = Server(conf(peers, port, interval, with_checker)).start(port)
    try:
        samples, t_kill, t_down, rss = [], None, None, 0
        c0, t0 = proc_cpu(s.pid()), time.monotonic()
        while True:
            now = time.monotonic()
            checks, state = poll(port, victim.addr)
            samples.append((now, checks))
            rss = max(rss, worker_rss_kb(s.pid()))
            done = len(rounds_from(samples, len(peers)))
            if with_checker and t_kill is None and done >= 1:
                victim.stop()
                t_kill = time.monotonic()
            if t_kill and t_down is None and state == '1':
                t_down = now
            if (window and now - t0 >= window) or \
                    (not window and done >= want_rounds and t_down):
                break
            if now - t0 > 900:
                break
            time.sleep(0.2)
        c1, t1 = proc_cpu(s.pid()), time.monotonic()
        return {'cpu_s': c1 - c0, 'wall_s': t1 - t0, 'rss_kb': rss,
                'rounds': rounds_from(samples, len(peers)), 't_kill': t_kill,
                't_down': t_down}
    finally:
        s.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--peers', type=int, default=1000)
    ap.add_argument('--interval', type=int, default=2000)
    ap.add_argument('--rounds', type=int, default=4)
    a = ap.parse_args()

    bport = free_port()
    peers = addrs(a.peers, bport)
    trickling = [p for i, p in enumerate(peers) if i % 10 == 3]
    hanging = [p for i, p in enumerate(peers) if i % 10 == 7]
    victim_addr = peers[a.peers // 2]
    healthy = [p for p in peers if p not in trickling + hanging + [victim_addr]]
    backend = Server(backend_conf(healthy)).start()
    wait_port(healthy[0].split(':')[0], bport)
    hostile = [Hostile(trickling, 'trickle').start(), Hostile(hanging, 'hang').start()]
    victim = Hostile(victim_addr, 'ok').start()
    try:
        hc = run(peers, victim, a.interval, a.rounds, True)
        base = run(peers, victim, a.interval, 0, False, window=20)
    finally:
        victim.stop()
        for h in hostile:
            h.stop()
        backend.stop()

    durations = [e - s for s, e in hc['rounds']]
    gaps = [s2 - e1 for (_, e1), (s2, _) in zip(hc['rounds'], hc['rounds'][1:])]
    bound = math.ceil(a.peers / CONCURRENCY) * 3 * TIMEOUT_MS / 1000
    cpu_pct = 100.0 * (hc['cpu_s'] / hc['wall_s'] - base['cpu_s'] / base['wall_s'])
    detect = hc['t_down'] - hc['t_kill'] if hc['t_down'] else None
    mean_round = sum(durations) / len(durations) if durations else None
    result = {
        'bench': 'healthcheck_hostile',
        'peers': a.peers, 'trickling': len(trickling), 'hanging': len(hanging),
        'interval_ms': a.interval, 'timeout_ms': TIMEOUT_MS, 'fall': FALL,
        'concurrency': CONCURRENCY,
        'round_s': [round(d, 1) for d in durations],
        'round_bound_s': bound,
        'gap_between_rounds_s': [round(g, 2) for g in gaps],
        'detection_s': detect and round(detect, 1),
        'fall_x_interval_s': FALL * a.interval / 1000,
        'fall_x_interval_plus_round_s': mean_round and
        round(FALL * (a.interval / 1000 + mean_round), 1),
        'checker_cpu_pct_of_one_core': round(cpu_pct, 2),
        'worker_rss_max_mb': round(hc['rss_kb'] / 1024, 1),
        'run_s': round(hc['wall_s'], 1),
    }
    print(json.dumps(result))


if __name__ == '__main__':
    main()
