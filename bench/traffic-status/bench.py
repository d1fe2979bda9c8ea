#!/usr/bin/env python3
"""traffic-status benchmark: the per-request cost of counting, and the time to
render /format/prometheus with 1000 hosts and 1000 upstream peers.

1. Throughput: wrk against proxied requests on loopback, through two front
   nginx instances of the same binary (one without the module's zone: counting
   off; one with it, filter_by_host and upstream counting: counting on), run in
   alternating rounds in the same run.  Reports the ratio of medians
   (goal >= 0.97).
2. Render: 1000 Host-keyed server zones and 1000 upstream peers with traffic,
   then the median time of GET /status/format/prometheus (goal <= 10 ms, the spec's performance contract).

Usage: NP_BUNDLE=<bundle dir> python3 bench/traffic-status/bench.py [--rounds N]
       [--duration S] [--json out.json]
Stops everything it started; exits non-zero if a goal is missed and --strict.
"""
import argparse
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import http.client

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUNDLE = pathlib.Path(os.environ.get('NP_BUNDLE', ROOT / 'dist' / 'nginx-portable'))


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(('127.0.0.1', port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError('port %d did not open' % port)


class Nginx:
    def __init__(self, base, name, conf):
        self.prefix = pathlib.Path(base) / name
        for d in ('conf', 'logs', 'temp'):
            (self.prefix / d).mkdir(parents=True, exist_ok=True)
        shutil.copy(BUNDLE / 'conf' / 'mime.types', self.prefix / 'conf' / 'mime.types')
        for d in ('sbin', 'lualib'):
            (self.prefix / d).symlink_to(BUNDLE / d)
        (self.prefix / 'conf' / 'nginx.conf').write_text(conf)

    def run(self, *args):
        return subprocess.run([str(self.prefix / 'sbin' / 'nginx'), '-p', str(self.prefix) + '/',
                               *args], capture_output=True, text=True, timeout=60)

    def start(self, ports):
        r = self.run()
        if r.returncode:
            raise RuntimeError(r.stderr)
        for p in ports:
            wait_port(p)

    def stop(self):
        pidf = self.prefix / 'logs' / 'nginx.pid'
        try:
            pid = int(pidf.read_text())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGQUIT)
        except ProcessLookupError:
            return
        end = time.monotonic() + 15
        while time.monotonic() < end:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)


def conf(body, workers=1, conns=4096):
    return f"""
daemon on;
master_process on;
worker_processes {workers};
worker_rlimit_nofile 16384;
error_log logs/error.log warn;
pid logs/nginx.pid;
events {{ worker_connections {conns}; }}
http {{
    access_log off;
    include mime.types;
    default_type application/octet-stream;
    keepalive_requests 1000000;
{body}
}}
"""


def wrk(port, duration, conns, host='bench.example'):
    """(requests/s, requests, non-2xx count)"""
    out = subprocess.run(['wrk', '-t1', '-c%d' % conns, '-d%ds' % duration, '-H', 'Host: ' + host,
                          'http://127.0.0.1:%d/p' % port],
                         capture_output=True, text=True, timeout=duration + 60).stdout
    m = re.search(r'Requests/sec:\s+([\d.]+)', out)
    total = re.search(r'(\d+) requests in', out)
    if not m or not total:
        raise RuntimeError('wrk output: ' + out)
    errs = re.search(r'Non-2xx or 3xx responses: (\d+)', out)
    return float(m.group(1)), int(total.group(1)), int(errs.group(1)) if errs else 0


def worker_cpu(n):
    """CPU seconds (user + system) used so far by the workers of an instance."""
    master = (n.prefix / 'logs' / 'nginx.pid').read_text().strip()
    pids = subprocess.run(['ps', '-o', 'pid=', '--ppid', master], capture_output=True,
                          text=True).stdout.split()
    tick = os.sysconf('SC_CLK_TCK')
    total = 0
    for pid in pids:
        try:
            f = pathlib.Path('/proc/%s/stat' % pid).read_text().rsplit(')', 1)[1].split()
        except OSError:
            continue
        total += int(f[11]) + int(f[12])
    return total / tick


def bench_throughput(base, rounds, duration, conns):
    bport = free_port()
    backend = Nginx(base, 'backend', conf(f"""
    server {{ listen 127.0.0.1:{bport} reuseport backlog=4096;
              location / {{ return 200 "0123456789abcdef0123456789abcdef\\n"; }} }}
    """, workers=1))
    ports = {'off': free_port(), 'on': free_port()}
    fronts = {}
    for mode, port in ports.items():
        zone = ('vhost_traffic_status_zone shared:vts:8m;\n'
                '    vhost_traffic_status_filter_by_host on;') if mode == 'on' else ''
        fronts[mode] = Nginx(base, 'front-' + mode, conf(f"""
    {zone}
    upstream app {{ server 127.0.0.1:{bport}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    """, workers=1))
    try:
        backend.start([bport])
        for mode, n in fronts.items():
            n.start([ports[mode]])
        # warm-up (creates the zone entries, fills keep-alive pools)
        for mode in ('off', 'on'):
            wrk(ports[mode], 1, conns)
        results = {'off': [], 'on': [], 'pair_ratios': [], 'cpu_us': {'off': [], 'on': []}}
        for i in range(rounds):
            order = ('off', 'on') if i % 2 == 0 else ('on', 'off')
            got = {}
            for mode in order:
                cpu0 = worker_cpu(fronts[mode])
                rps, total, errs = wrk(ports[mode], duration, conns)
                cpu = worker_cpu(fronts[mode]) - cpu0
                if errs:
                    raise RuntimeError('%s: %d non-2xx responses' % (mode, errs))
                results[mode].append(rps)
                results['cpu_us'][mode].append(cpu * 1e6 / total)
                got[mode] = rps
                print('  round %2d %-3s %9.0f req/s  %6.1f us CPU/request in the front worker'
                      % (i + 1, mode, rps, cpu * 1e6 / total), flush=True)
            results['pair_ratios'].append(got['on'] / got['off'])
        return results
    finally:
        for n in list(fronts.values()) + [backend]:
            n.stop()


def bench_render(base, hosts, peers, samples):
    # one backend nginx listening on `peers` ports
    bports = []
    while len(bports) < peers:
        p = free_port()
        if p not in bports:
            bports.append(p)
    listens = '\n'.join('        listen 127.0.0.1:%d;' % p for p in bports)
    backend = Nginx(base, 'r-backend', conf(f"""
    server {{
{listens}
        location / {{ return 200 "ok\\n"; }}
    }}
    """, workers=1, conns=8192))
    fport, sport = free_port(), free_port()
    while fport in bports or sport in bports or fport == sport:   # the backend holds bports
        fport, sport = free_port(), free_port()
    servers = '\n'.join('        server 127.0.0.1:%d;' % p for p in bports)
    front = Nginx(base, 'r-front', conf(f"""
    vhost_traffic_status_zone shared:vts:64m;
    vhost_traffic_status_filter_by_host on;
    vhost_traffic_status_filter_max_node {hosts * 2};
    vhost_traffic_status_histogram_buckets 0.005 0.01 0.05 0.1 0.5 1 5;
    upstream many {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{fport};
        location / {{ proxy_pass http://many; }}
    }}
    server {{
        listen 127.0.0.1:{sport};
        vhost_traffic_status off;
        location /status {{ vhost_traffic_status_display; }}
    }}
    """, workers=1))
    try:
        backend.start(bports[:1])
        front.start([fport, sport])
        # max(hosts, peers) requests on keep-alive connections: every host and
        # every peer (round robin) gets traffic
        n = max(hosts, peers)
        batch = 100
        for i in range(0, n, batch):
            raw = b''
            for j in range(i, min(n, i + batch)):
                last = j == min(n, i + batch) - 1
                raw += (b'GET / HTTP/1.1\r\nHost: host%05d.example\r\n' % (j % hosts)
                        + (b'Connection: close\r\n' if last else b'') + b'\r\n')
            with socket.create_connection(('127.0.0.1', fport), timeout=30) as s:
                s.sendall(raw)
                while s.recv(65536):
                    pass
        c = http.client.HTTPConnection('127.0.0.1', sport, timeout=30)
        times, size = [], 0
        for _ in range(samples):
            t0 = time.perf_counter()
            c.request('GET', '/status/format/prometheus')
            body = c.getresponse().read()
            times.append((time.perf_counter() - t0) * 1000)
            size = len(body)
        text = body.decode()
        nhosts = len(set(re.findall(r'nginx_vts_server_requests_total\{host="(host\d+\.example)"', text)))
        npeers = len(set(re.findall(r'nginx_vts_upstream_requests_total\{upstream="many",backend="([^"]+)"', text)))
        t0 = time.perf_counter()
        c.request('GET', '/status/format/json')
        jbody = c.getresponse().read()
        json_ms = (time.perf_counter() - t0) * 1000
        json.loads(jbody)
        return {'median_ms': statistics.median(times), 'max_ms': max(times), 'bytes': size,
                'hosts': nhosts, 'peers': npeers, 'json_ms': json_ms}
    finally:
        front.stop()
        backend.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rounds', type=int, default=10)
    ap.add_argument('--duration', type=int, default=3)
    ap.add_argument('--conns', type=int, default=32)
    ap.add_argument('--hosts', type=int, default=1000)
    ap.add_argument('--peers', type=int, default=1000)
    ap.add_argument('--json')
    ap.add_argument('--strict', action='store_true')
    ap.add_argument('--render-only', action='store_true',
                    help='only the render figure (no wrk throughput rounds)')
    ap.add_argument('--samples', type=int, default=20)
    a = ap.parse_args()
    if a.render_only:
        base = tempfile.mkdtemp(prefix='vts-bench-')
        try:
            rr = bench_render(base, a.hosts, a.peers, a.samples)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        print(json.dumps({'bench': 'prometheus_render', **rr}))
        ok = rr['median_ms'] <= 10 and rr['hosts'] >= a.hosts and rr['peers'] >= a.peers
        if a.strict and not ok:
            sys.exit(1)
        return
    if not shutil.which('wrk'):
        sys.exit('wrk is required (apt-get install wrk)')
    base = tempfile.mkdtemp(prefix='vts-bench-')
    try:
        print('throughput: %d rounds x %ds, wrk -t1 -c%d, proxied to a keep-alive upstream'
              % (a.rounds, a.duration, a.conns), flush=True)
        res = bench_throughput(base, a.rounds, a.duration, a.conns)
        off, on = statistics.median(res['off']), statistics.median(res['on'])
        ratio = statistics.median(res['pair_ratios'])
        cpu_off = statistics.median(res['cpu_us']['off'])
        cpu_on = statistics.median(res['cpu_us']['on'])
        print('  median off %.0f req/s, on %.0f req/s; median of per-round ratios on/off %.3f '
              '(goal >= 0.97)' % (off, on, ratio), flush=True)
        print('  front worker CPU per request: off %.1f us, on %.1f us: counting costs %.2f us, '
              'CPU-bound throughput ratio %.3f' % (cpu_off, cpu_on, cpu_on - cpu_off,
                                                   cpu_off / cpu_on), flush=True)
        print('render: %d hosts, %d upstream peers' % (a.hosts, a.peers), flush=True)
        rr = bench_render(base, a.hosts, a.peers, 20)
        print('  /format/prometheus: median %.1f ms, max %.1f ms, %d bytes, %d hosts, %d peers '
              '(goal <= 10 ms); /format/json %.1f ms'
              % (rr['median_ms'], rr['max_ms'], rr['bytes'], rr['hosts'], rr['peers'],
                 rr['json_ms']))
        out = {'throughput': {'off': res['off'], 'on': res['on'], 'median_off': off,
                              'median_on': on, 'ratio': ratio,
                              'pair_ratios': res['pair_ratios'],
                              'cpu_us_per_request': res['cpu_us'],
                              'cpu_ratio': cpu_off / cpu_on},
               'render': rr}
        if a.json:
            pathlib.Path(a.json).write_text(json.dumps(out, indent=2))
        ok = ratio >= 0.97 and rr["median_ms"] <= 10 and rr['hosts'] >= a.hosts \
            and rr['peers'] >= a.peers
        print('RESULT: %s' % ('goals met' if ok else 'goal missed'))
        if a.strict and not ok:
            sys.exit(1)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == '__main__':
    main()
