#!/usr/bin/env python3
"""Instructions per proxied request, counted by valgrind's callgrind: the
steady cost figure on a noisy shared machine (instruction counts do not
depend on what else the machine does).

One front nginx (master_process off, one process) runs under callgrind and
proxies to a backend nginx that is not under valgrind.  Each configuration
is run twice, with N_SMALL and N_LARGE keep-alive requests; the difference of
the two totals divided by the difference of the request counts is the cost of
one request, start-up and shutdown cancelling out.

Configurations (same binary):
  off   no vhost_traffic_status_zone: the module does not count
  on    the default config's directives: the zone and filter_by_host on
  EXTRA more can be named with --config NAME=DIRECTIVES (http-level text)
With --hc-report four more (the passive-check cost of issues 16 and 29):
  hc_active   a health checker on the proxied group without `passive` (its
              one round at start-up cancels out)
  hc_passive  the same with `passive` on, no log_by_lua: since issue 29 the
              passive checks themselves (the C log handler); before, nothing
  hc_log      hc_passive plus an empty log_by_lua_block (what any Lua log
              handler costs)
  hc_report   hc_passive plus log_by_lua_block { hc.report() }: the old way
              to enable passive checks (since issue 29 a no-op call)
and the differences: passive_cost = hc_passive - hc_active (what `passive`
costs a request that does not fail; issue 29 goal: <= 300),
hc_report_cost = hc_report - hc_passive (what a log_by_lua hc.report() line
adds) and hc_report_call_cost = hc_report - hc_log (the call itself).

With --static it also counts one static request (a 612-byte file served
from html/, the size of nginx's index.html) under the `off` configuration.

With --function NAME (and --nginx/--binary PATH, an unstripped nginx of the same
build: .build/release/nginx/objs/nginx) it also reports NAME's inclusive
instructions per request (e.g. ngx_http_vts_log_handler: the whole counting
path), from callgrind_annotate: free of the run-to-run noise of the totals
(the event loop's iterations depend on timing, ~+-900 instructions a request
at load 10), so a small change of the request path shows (issue 28: what
histogram buckets add).

With --render-hosts N it also counts the instructions of one
GET /status/format/prometheus over N Host-keyed server zones (N distinct Host
headers sent first; renders once vs RENDERS_LARGE times, the difference per
extra render): the render cost, steady where wall-clock times are not.

With --event-path (needs --nginx: the same build with its symbols, e.g.
.build/release/nginx/objs/nginx, whose BuildID equals the bundle's stripped
binary) only the instructions under ngx_epoll_process_events are counted
(callgrind --toggle-collect): the I/O events, i.e. the requests, without the
timers.  The checker's sync timer runs every 0.1 s whatever the requests do,
so its share per request follows the wall time of the run; on a shared
machine that moved the hc_* totals by +-1000 instructions between runs of
one binary, more than the figures compared here.

The event path still moves by a few hundred instructions per request between
runs (how many epoll wake-ups and reads a request takes depends on timing
under valgrind).  For one function's own cost, exact to the instruction,
--collect PATTERN (again with --nginx; callgrind's wildcards, e.g.
'*live_failures_log_handler*') counts only the instructions inside the
functions it matches, callees included.

Usage: NP_BUNDLE=<bundle> python3 bench/callgrind/bench_instructions.py
       [--render-hosts 2000] [--json out] [--hc-report]
       [--nginx BIN (--event-path | --collect PATTERN)] [--only NAME,...]
Prints one JSON line: instructions per request for each configuration and
the on/off ratio (issue goal: <= 1.08).
"""
import argparse
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from common import BUNDLE, Server, main_conf, wait_port  # noqa: E402

N_SMALL, N_LARGE = 200, 1200
NGINX = BUNDLE / 'sbin' / 'nginx'       # --nginx (or --binary)
FUNCTION = None                         # --function
CONFIGS = {
    'off': '',
    'on': 'vhost_traffic_status_filter_by_host on;\n'
          '    vhost_traffic_status_zone shared:vhost_traffic_status:64m;',
}


HC_CHECKER = r'''lua_shared_dict healthcheck 1m;
    init_worker_by_lua_block {
        local hc = require "resty.upstream.healthcheck"
        assert(hc.spawn_checker{type = "http", http_req = "GET / HTTP/1.0\r\n\r\n",
            shm = "healthcheck", upstream = "backend", interval = 600000%s})
    }'''
HC_PASSIVE = HC_CHECKER % ',\n            passive = {fall = 5, statuses = {502, 503, 504}}'
HC_CONFIGS = {
    'hc_active': HC_CHECKER % '',
    'hc_passive': HC_PASSIVE,
    'hc_log': HC_PASSIVE + '\n    log_by_lua_block { }',
    'hc_report': HC_PASSIVE + '\n    log_by_lua_block { require("resty.upstream.healthcheck").report() }',
}


def front_conf(port, backend_port, directives):
    # the display needs the zone: only configurations that declare one get it
    status = ('location /status { vhost_traffic_status_display;'
              ' vhost_traffic_status_display_format prometheus; }'
              if 'vhost_traffic_status_zone' in directives else '')
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid logs/nginx.pid;
error_log logs/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    {directives}
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 4;
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name bench.test;
        {status}
        location /static/ {{ root html; }}
        location / {{
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://backend;
        }}
    }}
}}
"""


def backend_conf(port):
    return main_conf(f"""
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "ok\\n"; }}
    }}""")


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


RENDERS_LARGE = 6


def send_requests(port, n, path='/x', hosts=None):
    """n keep-alive GETs on one connection (Host from `hosts` in turn); every answer must be a 200."""
    with socket.create_connection(('127.0.0.1', port), timeout=60) as s:
        f = s.makefile('rb')
        for i in range(n):
            host = hosts[i % len(hosts)] if hosts else 'bench.test'
            s.sendall(b'GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: bench\r\n\r\n'
                      % (path.encode(), host.encode()))
            status = f.readline()
            if b' 200 ' not in status:
                raise RuntimeError('unexpected answer %r' % status)
            length = 0
            while True:
                line = f.readline()
                if line in (b'\r\n', b''):
                    break
                if line.lower().startswith(b'content-length:'):
                    length = int(line.split(b':')[1])
            f.read(length)


STATIC_FILE = 'html/static/index.html'


def function_ir(out):
    """FUNCTION's inclusive instructions in a callgrind output file (0: never
    called, e.g. the counting without a zone)."""
    text = subprocess.run(['callgrind_annotate', '--inclusive=yes', '--threshold=100', str(out)],
                          capture_output=True, text=True, check=True).stdout
    found = [int(m.group(1).replace(',', '')) for m in
             re.finditer(r'^\s*([\d,]+) \(.*?\)\s+\S*:%s\(' % re.escape(FUNCTION), text, re.M)]
    return max(found, default=0)


CALLGRIND_OPTS = []     # --event-path, --collect: extra callgrind options


def instructions(directives, backend_port, n, renders=0, hosts=None, path='/x'):
    """Total instructions (Ir) of one front nginx run that served n requests
    for path (with `hosts`: spread over those Host headers) and then `renders`
    scrapes; with FUNCTION, (total, FUNCTION's inclusive Ir)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix='np-cg-') as d:
        srv = Server(front_conf(port, backend_port, directives), files={STATIC_FILE: 'x' * 611 + '\n'})
        out = pathlib.Path(d) / 'callgrind.out'
        cmd = ['valgrind', '--tool=callgrind', '--callgrind-out-file=%s' % out, *CALLGRIND_OPTS,
               str(NGINX), '-p', str(srv.dir) + '/', '-c', 'conf/nginx.conf']
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_port('127.0.0.1', port, timeout=600)
            send_requests(port, n, path=path, hosts=hosts)
            if renders:
                send_requests(port, renders, path='/status/format/prometheus')
        finally:
            proc.send_signal(3)                           # SIGQUIT: graceful, callgrind dumps
            _, err = proc.communicate(timeout=600)    # valgrind exits slowly on a busy machine
            srv.stop()
        text = out.read_text(errors='replace')
        m = re.search(r'^(?:totals|summary):\s+(\d+)', text, re.M)
        if not m:
            raise RuntimeError('no totals in callgrind output:\n' + err.decode(errors='replace')[-2000:])
        if FUNCTION:
            return int(m.group(1)), function_ir(out)
        return int(m.group(1))


def per_request(directives, backend_port, path='/x'):
    """Instructions per request; with FUNCTION, (that, FUNCTION's share)."""
    small = instructions(directives, backend_port, N_SMALL, path=path)
    large = instructions(directives, backend_port, N_LARGE, path=path)
    if FUNCTION:
        return tuple((lg - sm) / (N_LARGE - N_SMALL) for lg, sm in zip(large, small))
    return (large - small) / (N_LARGE - N_SMALL)


def per_render(backend_port, nhosts):
    hosts = ['h%05d.bench.test' % i for i in range(nhosts)]
    one = instructions(CONFIGS['on'], backend_port, nhosts, renders=1, hosts=hosts)
    many = instructions(CONFIGS['on'], backend_port, nhosts, renders=RENDERS_LARGE, hosts=hosts)
    return (many - one) / (RENDERS_LARGE - 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--json', help='also write the result here')
    ap.add_argument('--config', action='append', default=[], metavar='NAME=DIRECTIVES')
    ap.add_argument('--render-hosts', type=int, default=0, metavar='N')
    ap.add_argument('--static', action='store_true', help='also measure a static file request')
    ap.add_argument('--function', metavar='NAME',
                    help="also report NAME's inclusive instructions per request")
    ap.add_argument('--nginx', '--binary', metavar='BIN', dest='nginx',
                    help="run this nginx binary (the bundle's, unstripped: for --function, "
                         "--event-path, --collect) under callgrind")
    ap.add_argument('--hc-report', action='store_true',
                    help='also measure hc.report() (passive health checks)')
    ap.add_argument('--event-path', action='store_true',
                    help='count only ngx_epoll_process_events (needs --nginx): requests, no timers')
    ap.add_argument('--collect', action='append', default=[], metavar='PATTERN',
                    help='count only the functions matching (needs --nginx; repeatable)')
    ap.add_argument('--only', help='measure only these configurations (comma-separated)')
    a = ap.parse_args()
    global NGINX, FUNCTION
    NGINX = pathlib.Path(a.nginx) if a.nginx else NGINX
    FUNCTION = a.function
    if a.event_path:
        a.collect.append('ngx_epoll_process_events')
    if a.collect and not a.nginx:
        ap.error('--event-path and --collect need --nginx (a binary with symbols)')
    CALLGRIND_OPTS.extend('--toggle-collect=' + c for c in a.collect)
    configs = dict(CONFIGS)
    if a.hc_report:
        configs.update(HC_CONFIGS)
    for c in a.config:
        name, _, text = c.partition('=')
        configs[name] = text
    if a.only:
        configs = {k: v for k, v in configs.items() if k in a.only.split(',')}
    bport = free_port()
    backend = Server(backend_conf(bport)).start(bport)
    try:
        result = {}
        for name, text in configs.items():
            r = per_request(text, bport)
            if FUNCTION:
                r, result['%s_%s' % (name, FUNCTION)] = r[0], round(r[1], 1)
            result[name] = round(r)
        if FUNCTION and not any(v for k, v in result.items() if k.endswith(FUNCTION)):
            raise RuntimeError('%s is in no profile (an unstripped --binary?)' % FUNCTION)
        if a.static:
            FUNCTION = None
            result['static'] = round(per_request(CONFIGS['off'], bport, path='/static/index.html'))
        if a.render_hosts:
            FUNCTION = None
            result['prometheus_render_%d_hosts' % a.render_hosts] = round(per_render(bport, a.render_hosts))
    finally:
        backend.stop()
    if 'on' in result and result.get('off'):
        result['ratio_on_off'] = round(result['on'] / result['off'], 4)
    for key, more, less in (('passive_cost', 'hc_passive', 'hc_active'),
                            ('hc_report_cost', 'hc_report', 'hc_passive'),
                            ('hc_report_call_cost', 'hc_report', 'hc_log')):
        if more in result and less in result:
            result[key] = result[more] - result[less]
    line = json.dumps({'bench': 'instructions_per_request',
                       'counted': ', '.join(a.collect) or 'whole process', **result})
    print(line)
    if a.json:
        pathlib.Path(a.json).write_text(line + '\n')


if __name__ == '__main__':
    main()
