#!/usr/bin/env python3
"""A plain request's latency while clients loop on big checker pages
(issue 26, item 5).

One worker, 2,000 checked peers (closed ports on 127.0.93.x: every check
fails fast, one round, then nothing changes); the same server answers
/prom (`prometheus_status_page({extended = true})`, ~4 MB), /json
(`status_json()`, ~0.7 MB) and /plain (`ngx.say("ok")`).

Per bundle (--old, the bundle under test, or both), three phases of
--requests plain requests each, timed by curl itself (`%{time_total}`, one
keep-alive connection, --rate paced):
- alone: nothing else runs (the baseline of this run);
- loaded: two curl loops fetch /prom and /json back to back meanwhile.
Reported: plain p50/p99 alone and loaded, the loaded/alone ratios, and the
page fetches per second the loops got.  Every process of a measurement runs
at `nice -n -10` when allowed, so other jobs of a shared machine disturb it
less (both bundles alike).
"""
import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from common import BUNDLE, Server, main_conf, wait_port  # noqa: E402

PORT = 18931
PEERS = ['127.0.93.%d:%d' % (1 + i % 250, 2000 + i // 250) for i in range(2000)]

HTTP = """
    lua_shared_dict healthcheck 16m;
    upstream big {
%(servers)s
    }
    init_worker_by_lua_block {
        local hc = require "resty.upstream.healthcheck"
        local ok, err = hc.spawn_checker{
            shm = "healthcheck", upstream = "big", type = "http",
            http_req = "GET / HTTP/1.0\\r\\n\\r\\n",
            interval = 600000, timeout = 200, fall = 1, rise = 1,
            concurrency = 200,
        }
        if not ok then ngx.log(ngx.ERR, err) end
    }
    server {
        listen 127.0.0.1:%(port)d;
        location = /prom {
            content_by_lua_block {
                local hc = require "resty.upstream.healthcheck"
                ngx.print(hc.prometheus_status_page({extended = true}))
            }
        }
        location = /json {
            content_by_lua_block {
                ngx.print(require("resty.upstream.healthcheck").status_json())
            }
        }
        location = /plain { content_by_lua_block { ngx.say("ok") } }
    }
"""

NICE = ['nice', '-n', '-10'] if os.geteuid() == 0 else []


def url(path):
    return 'http://127.0.0.1:%d%s' % (PORT, path)


def plain_times(n, rate):
    cmd = NICE + ['curl', '-s', '--rate', '%d/s' % rate, '-w', '%{time_total}\n']
    for _ in range(n):
        cmd += ['-o', '/dev/null', url('/plain')]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return sorted(float(x) for x in out.split())


def pct(sorted_times, q):
    return sorted_times[min(len(sorted_times) - 1, int(len(sorted_times) * q))] * 1000


def first_round_done():
    out = subprocess.run(['curl', '-s', url('/prom')], capture_output=True, text=True).stdout
    return 'DOWN' in out


def measure(bundle, requests, rate):
    conf = main_conf(HTTP % {'servers': '\n'.join('        server %s;' % p for p in PEERS),
                             'port': PORT})
    # bundle's own binary and lualib (Server links lualib only for the default bundle)
    srv = Server(conf, binary=str(pathlib.Path(bundle) / 'sbin' / 'nginx'))
    (srv.dir / 'lualib').symlink_to(pathlib.Path(bundle) / 'lualib')
    try:
        subprocess.run(NICE + [srv.binary, '-p', str(srv.dir) + '/', '-c', 'conf/nginx.conf',
                               '-e', 'logs/error.log'], check=True)
        wait_port('127.0.0.1', PORT)
        deadline = time.monotonic() + 60
        while not first_round_done():
            if time.monotonic() > deadline:
                raise RuntimeError('the first round did not finish')
            time.sleep(0.5)
        alone = plain_times(requests, rate)
        loops = [subprocess.Popen(
            NICE + ['bash', '-c', 'while :; do curl -s -o /dev/null -w "%%{time_total}\\n" %s; done'
                    % url(path)], stdout=subprocess.PIPE, text=True) for path in ('/prom', '/json')]
        time.sleep(1.0)
        t0 = time.monotonic()
        loaded = plain_times(requests, rate)
        elapsed = time.monotonic() - t0
        for p in loops:
            p.kill()
        fetched = sum(len(p.communicate()[0].split()) for p in loops)
    finally:
        srv.stop()
    return alone, loaded, fetched / max(elapsed, 1e-6)


def report(name, alone, loaded, fetch_rate):
    a50, a99, l50, l99 = pct(alone, .5), pct(alone, .99), pct(loaded, .5), pct(loaded, .99)
    print('%-8s alone p50 %6.2f ms p99 %6.2f ms | loaded p50 %6.2f ms p99 %6.2f ms '
          '(x%.1f, x%.1f) | pages fetched %.1f/s' % (name, a50, a99, l50, l99, l50 / a50,
                                                    l99 / a99, fetch_rate))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--old', help='a bundle to compare with (same run)')
    ap.add_argument('--requests', type=int, default=1000)
    ap.add_argument('--rate', type=int, default=100, help='plain requests per second')
    ap.add_argument('--runs', type=int, default=1)
    args = ap.parse_args()
    bundles = ([('old', args.old)] if args.old else []) + [('new', str(BUNDLE))]
    for run in range(args.runs):
        for name, bundle in bundles:
            report(name, *measure(bundle, args.requests, args.rate))


if __name__ == '__main__':
    main()
