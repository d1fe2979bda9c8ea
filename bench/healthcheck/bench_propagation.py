#!/usr/bin/env python3
"""How long a DOWN decision of the health checker takes to reach the balancer
of every worker: idle and under load (wrk), with and without `zone` in the
upstream.

A backend nginx (not measured) serves two peers of `upstream u`: the victim
(127.0.0.1:PV) and a healthy one (127.0.0.1:PH), and logs every request with
`$msec`, the front worker's pid (an `X-Worker` header the front sets) and the
URI.  The front nginx (4 workers, `reuseport`, so new connections spread over
the workers) checks both peers every INTERVAL ms with fall 2.  A trial makes
the victim answer its health checks with 500 while it keeps serving clients;
the decision time is when the backend answered the fall-th failing check (the
checker decides on reading that status line), and each worker's propagation
delay is its last client request sent to the victim after that moment
(0 when it sent none).  Idle = one request every ~2 ms over new connections;
load = wrk -t2 -c32 on keep-alive connections.  The figure of a trial is the
slowest worker; each case reports the median and the worst of --trials.

With --slow-peer MS the upstream also has a backup peer that accepts
connections and never answers (a listener nobody accepts from), and the
checker's timeout is MS: every round then ends MS after the victim's check,
which must not delay the other workers' DOWN (it did before the version was
bumped at the decision instead of at the round's end).

Usage: NP_BUNDLE=<bundle> python3 bench/healthcheck/bench_propagation.py
       [--trials 5] [--interval 500] [--slow-peer MS] [--json out.json]
Prints one JSON line.  Stops everything it started.
"""
import argparse
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import threading
import time
import http.client

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from common import Server, main_conf, wait_port  # noqa: E402

FALL = 2
WORKERS = 4


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def backend_conf(pv, ph, fail_flag, log):
    return main_conf(f"""
    log_format prop '$msec $http_x_worker $uri $server_port';
    server {{
        listen 127.0.0.1:{pv};
        listen 127.0.0.1:{ph};
        access_log {log} prop;
        location = /hc {{
            if (-f {fail_flag}) {{ set $fail "$server_port"; }}
            if ($fail = "{pv}") {{ return 500; }}
            return 200;
        }}
        location / {{ return 200 "ok\\n"; }}
    }}""", workers=1, affinity=False)


def front_conf(port, pv, ph, interval, zone, slow):
    zone_line = 'zone u 64k;' if zone else ''
    slow_line = 'server 127.0.0.1:%d backup;' % slow[0] if slow else ''
    timeout = slow[1] if slow else 500
    return main_conf(f"""
    lua_shared_dict healthcheck 1m;
    upstream u {{
        {zone_line}
        server 127.0.0.1:{pv};
        server 127.0.0.1:{ph};
        {slow_line}
    }}
    init_worker_by_lua_block {{
        local hc = require "resty.upstream.healthcheck"
        local ok, err = hc.spawn_checker{{
            shm = "healthcheck", upstream = "u", type = "http",
            http_req = "GET /hc HTTP/1.0\\r\\nHost: hc\\r\\n\\r\\n",
            interval = {interval}, timeout = {timeout}, fall = {FALL}, rise = 1,
            valid_statuses = {{200}},
        }}
        if not ok then ngx.log(ngx.ERR, "spawn_checker: ", err) end
    }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            proxy_set_header X-Worker $pid;
            proxy_pass http://u;
        }}
        location = /status {{
            content_by_lua_block {{ ngx.print(require("resty.upstream.healthcheck").status_page()) }}
        }}
    }}""", workers=WORKERS, affinity=False, main='worker_rlimit_nofile 4096;')


def status_of(port, peer):
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=5)
    try:
        conn.request('GET', '/status')
        for line in conn.getresponse().read().decode().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == peer:
                return parts[1]
    finally:
        conn.close()
    return None


def wait_state(port, peer, state, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if status_of(port, peer) == state:
            return
        time.sleep(0.05)
    raise RuntimeError('%s did not turn %s' % (peer, state))


class IdleClient(threading.Thread):
    """One request every ~2 ms, each on a new connection (spread by reuseport)."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.stop = port, threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=5)
                conn.request('GET', '/x', headers={'Connection': 'close'})
                conn.getresponse().read()
                conn.close()
            except OSError:
                pass
            time.sleep(0.002)


def read_log(log, offset):
    with open(log, 'rb') as f:
        f.seek(offset)
        data = f.read()
    rows = []
    for line in data.decode(errors='replace').splitlines():
        parts = line.split()
        if len(parts) == 4:
            rows.append((float(parts[0]), parts[1], parts[2], parts[3]))
    return rows


def trial(front_port, pv, fail_flag, log, window):
    """One DOWN decision; returns (slowest worker's delay in ms, workers seen).
    Requests are looked for during `window` seconds after the decision."""
    offset = os.path.getsize(log)
    fail_flag.write_text('1')
    wait_state(front_port, '127.0.0.1:%d' % pv, 'DOWN')
    time.sleep(window)                    # let every late request reach the log
    rows = read_log(log, offset)
    fails = [r[0] for r in rows if r[2] == '/hc' and r[3] == str(pv)]
    if len(fails) < FALL:
        raise RuntimeError('saw %d failing checks' % len(fails))
    decided = fails[FALL - 1]
    workers = {r[1] for r in rows if r[2] != '/hc' and r[1] != '-'}
    delays = {}
    for w in workers:
        late = [r[0] for r in rows if r[1] == w and r[2] != '/hc' and r[3] == str(pv) and r[0] > decided]
        delays[w] = (max(late) - decided) * 1000 if late else 0.0
    fail_flag.unlink()
    wait_state(front_port, '127.0.0.1:%d' % pv, 'UP')
    return max(delays.values()) if delays else None, len(workers)


def silent_listener():
    """A listening socket nobody accepts from: connects succeed, reads time out."""
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    s.listen(128)
    return s


def run_case(zone, load, trials, interval, tmp, slow_ms):
    pv, ph, fport = free_port(), free_port(), free_port()
    hole = silent_listener() if slow_ms else None
    slow = (hole.getsockname()[1], slow_ms) if hole else None
    fail_flag = tmp / ('fail-%d' % pv)
    log = tmp / ('backend-%d.log' % pv)
    log.touch()
    backend = Server(backend_conf(pv, ph, fail_flag, log)).start(pv, ph)
    front = Server(front_conf(fport, pv, ph, interval, zone, slow)).start(fport)
    client = None
    try:
        wait_state(fport, '127.0.0.1:%d' % pv, 'UP')
        if load:
            client = subprocess.Popen(['wrk', '-t2', '-c32', '-d%ds' % (trials * (8 + 2 * slow_ms // 1000) + 20),
                                       'http://127.0.0.1:%d/x' % fport],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            client = IdleClient(fport)
            client.start()
        time.sleep(1.0)
        results, seen = [], []
        for _ in range(trials):
            # a slow peer can hold a round (and, before, the DOWN) for its timeout
            delay, nworkers = trial(fport, pv, fail_flag, log, 1.0 + slow_ms / 1000)
            results.append(delay)
            seen.append(nworkers)
    finally:
        if load and client:
            client.terminate()
            client.wait()
        elif client:
            client.stop.set()
            client.join()
        front.stop()
        backend.stop()
        if hole:
            hole.close()
    return {'median_ms': round(statistics.median(results), 1), 'max_ms': round(max(results), 1),
            'workers_seen': min(seen)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--trials', type=int, default=5)
    ap.add_argument('--interval', type=int, default=500)
    ap.add_argument('--slow-peer', type=int, default=0, metavar='MS')
    ap.add_argument('--json')
    a = ap.parse_args()
    tmp = pathlib.Path(os.environ.get('TMPDIR', '/tmp')) / ('np-prop-%d' % os.getpid())
    tmp.mkdir(parents=True, exist_ok=True)
    os.chmod(tmp, 0o777)
    out = {'bench': 'down_propagation', 'interval_ms': a.interval, 'workers': WORKERS,
           'slow_peer_ms': a.slow_peer}
    for zone in (False, True):
        for load in (False, True):
            key = '%s_%s' % ('zone' if zone else 'nozone', 'load' if load else 'idle')
            out[key] = run_case(zone, load, a.trials, a.interval, tmp, a.slow_peer)
            print(key, out[key], file=sys.stderr)
    line = json.dumps(out)
    print(line)
    if a.json:
        pathlib.Path(a.json).write_text(line + '\n')


if __name__ == '__main__':
    main()
