#!/usr/bin/env python3
"""Run every benchmark against its baseline in the same run and write
bench/RESULTS.md.  One command:

    NP_BUNDLE=dist/nginx-portable /usr/bin/python3 bench/report.py

Knobs (environment): BENCH_RUNS (wrk runs per side, default 5), BENCH_SECONDS
(seconds per wrk run, default 4), BENCH_STARTS (cold starts per side, 9),
HC_WINDOW (seconds of checker CPU sampling, 15), VTS_ROUNDS (6).
Takes ~8-10 minutes; needs wrk, taskset, Debian's nginx-light (build/install-deps.sh).
"""
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from common import BUNDLE, Server, wait_port  # noqa: E402


def load(rel):
    spec = importlib.util.spec_from_file_location(pathlib.Path(rel).stem, HERE / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def sh(*cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (r.stdout + r.stderr).strip()
    except OSError:
        return '?'


def machine():
    model = '?'
    for line in open('/proc/cpuinfo'):
        if line.startswith('model name'):
            model = line.split(':', 1)[1].strip()
            break
    mem = next(l.split()[1] for l in open('/proc/meminfo') if l.startswith('MemTotal'))
    return {
        'cpu': model, 'cpus': os.cpu_count(), 'kernel': platform.release(),
        'mem_gb': round(int(mem) / 1024 / 1024, 1),
        'os': sh('sh', '-c', '. /etc/os-release; echo $PRETTY_NAME'),
        'bundle_nginx': sh(str(BUNDLE / 'sbin' / 'nginx'), '-v'),
        'debian_nginx': sh('/usr/sbin/nginx', '-v') + ' (' + sh(
            'dpkg-query', '-W', '-f=${Package} ${Version}', 'nginx-light') + ')',
        'wrk': sh('sh', '-c', 'dpkg-query -W -f="\\${Version}" wrk'),
        'git': sh('git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'),
    }


def loadavg():
    return open('/proc/loadavg').read().split()[0]


def checker_cpu(hcmod, n, window):
    bport = hcmod.free_port()
    peers = hcmod.addrs(n, bport)
    backend = Server(hcmod.backend_conf(peers)).start()
    wait_port(peers[0].split(':')[0], bport)
    try:
        base = hcmod.measure(peers, 2000, 1, False, window)
        hc = hcmod.measure(peers, 2000, 1, True, window)
    finally:
        backend.stop()
    return {'peers': n, 'interval_ms': 2000, 'window_s': round(hc['wall_s'], 1),
            'checker_cpu_s': round(hc['cpu_s'], 3), 'baseline_cpu_s': round(base['cpu_s'], 3),
            'checker_pct_of_core': round(100 * hc['cpu_s'] / hc['wall_s'], 2),
            'baseline_pct_of_core': round(100 * base['cpu_s'] / base['wall_s'], 2),
            'extra_pct_of_core': round(100 * (hc['cpu_s'] - base['cpu_s']) / hc['wall_s'], 2),
            'rounds': round(hc['checks'] / n, 1), 'peers_up': hc['up']}


def traffic_status(rounds, seconds):
    with tempfile.TemporaryDirectory() as d:
        out = pathlib.Path(d) / 'vts.json'
        subprocess.run([sys.executable, str(HERE / 'traffic-status' / 'bench.py'), '--rounds',
                        str(rounds), '--duration', str(seconds), '--json', str(out)],
                       check=True, env=dict(os.environ, NP_BUNDLE=str(BUNDLE)), stdout=sys.stderr)
        return json.loads(out.read_text())


def main():
    for tool in ('wrk', 'taskset'):
        if not shutil.which(tool):
            sys.exit('%s is required (bash build/install-deps.sh)' % tool)
    if not os.path.exists('/usr/sbin/nginx'):
        sys.exit("Debian's nginx-light is required (bash build/install-deps.sh)")
    runs = int(os.environ.get('BENCH_RUNS', '5'))
    seconds = int(os.environ.get('BENCH_SECONDS', '4'))
    os.environ['BENCH_RUNS'], os.environ['BENCH_SECONDS'] = str(runs), str(seconds)
    t_start = time.monotonic()
    info = machine()
    info['date'] = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
    info['load_before'] = loadavg()
    res, took = {}, {}

    def step(name, fn):
        print('== %s' % name, file=sys.stderr, flush=True)
        t = time.monotonic()
        res[name] = fn()
        took[name] = round(time.monotonic() - t)
        print(json.dumps(res[name])[:400], file=sys.stderr, flush=True)

    startup = load('compare/bench_startup.py')
    step('size', startup.run_size)
    step('cold_start', lambda: startup.run_startup(int(os.environ.get('BENCH_STARTS', '9'))))
    step('static', lambda: load('static/bench_static.py').main())
    step('proxied', lambda: load('compare/bench_proxy.py').run(runs, seconds))
    step('traffic_status', lambda: traffic_status(int(os.environ.get('VTS_ROUNDS', '6')), 3))
    step('hc_client', lambda: load('compare/bench_hc_load.py').run(runs, seconds))
    step('metrics_render', lambda: load('compare/bench_metrics_render.py').run())
    hcmod = load('healthcheck/bench_healthcheck.py')
    window = float(os.environ.get('HC_WINDOW', '15'))
    step('checker_cpu', lambda: [checker_cpu(hcmod, n, window) for n in (100, 1000)])
    info['load_after'] = loadavg()
    info['minutes'] = round((time.monotonic() - t_start) / 60, 1)
    write(info, res, took, runs, seconds)
    print(json.dumps({'machine': info, 'results': res}))


def fmt(x, unit=''):
    if isinstance(x, float):
        x = ('%.0f' % x) if x >= 100 else ('%.3g' % x)
    return '%s%s' % (x, unit)


def write(info, r, took, runs, seconds):
    rows = []
    s, p, v, h = r['static'], r['proxied'], r['traffic_status'], r['hc_client']
    rows.append(('Static 200, req/s', fmt(s['bundle_rps']), "Debian nginx-light: " + fmt(s['debian_nginx_light_rps']),
                 s['ratio']))
    rows.append(('Proxied 200 (keep-alive upstream), req/s', fmt(p['bundle_rps']),
                 'Debian nginx-light: ' + fmt(p['debian_nginx_light_rps']), p['ratio']))
    t = v['throughput']
    rows.append(('traffic-status on (filter_by_host + upstream), req/s', fmt(t['median_on']),
                 'off (no zone): ' + fmt(t['median_off']), round(t['ratio'], 3)))
    cpu_on = sorted(t['cpu_us_per_request']['on'])[len(t['cpu_us_per_request']['on']) // 2]
    cpu_off = sorted(t['cpu_us_per_request']['off'])[len(t['cpu_us_per_request']['off']) // 2]
    rows.append(('traffic-status on, worker CPU per request', fmt(cpu_on, ' µs'),
                 'off: ' + fmt(cpu_off, ' µs'), round(cpu_on / cpu_off, 3)))
    rows.append(('Health checks running (20 peers every 500 ms), client req/s',
                 fmt(h['checker_on_rps']), 'no checker: ' + fmt(h['checker_off_rps']), h['ratio']))
    base10 = r['metrics_render'][0]['metrics_ms']
    for m in r['metrics_render']:
        rows.append(('/metrics render, %d peers (%s KB)' % (m['peers'], m['bytes'] // 1024),
                     fmt(m['metrics_ms'], ' ms'),
                     'trivial Lua endpoint: %s; 10 peers: %s' % (fmt(m['trivial_lua_ms'], ' ms'),
                                                                  fmt(base10, ' ms')),
                     '%s (vs 10 peers: %s)' % (m['ratio'], round(m['metrics_ms'] / base10, 1))))
    rr = v['render']
    rows.append(('traffic-status /format/prometheus, %d hosts + %d peers' % (rr['hosts'], rr['peers']),
                 fmt(rr['median_ms'], ' ms'), '/format/json same data: ' + fmt(rr['json_ms'], ' ms'),
                 round(rr['median_ms'] / rr['json_ms'], 2)))
    for c in r['checker_cpu']:
        rows.append(('Checker CPU, %d peers every 2 s' % c['peers'],
                     fmt(c['checker_pct_of_core'], ' % of a core'),
                     'same nginx, no checker: ' + fmt(c['baseline_pct_of_core'], ' %'),
                     '+%s %% of a core' % c['extra_pct_of_core']))
    z = r['size']
    rows.append(('Binary size (static-pie, stripped)', fmt(z['bundle_bytes'] / 1e6, ' MB'),
                 'Debian nginx: %s; with its %d shared libs: %s' % (
                     fmt(z['debian_nginx_light_bytes'] / 1e6, ' MB'), len(z['debian_shared_libs']),
                     fmt(z['debian_with_shared_libs_bytes'] / 1e6, ' MB')),
                 '%s (with libs: %s)' % (z['ratio'], z['ratio_with_libs'])))
    c = r['cold_start']
    rows.append(('Cold start to first 200, minimal config', fmt(c['bundle_ms'], ' ms'),
                 'Debian nginx-light: ' + fmt(c['debian_nginx_light_ms'], ' ms'), c['ratio']))
    rows.append(('Cold start, the default config (Lua, checkers, TLS demo)',
                 fmt(c['bundle_default_config_ms'], ' ms'),
                 'Debian nginx-light, minimal: ' + fmt(c['debian_nginx_light_ms'], ' ms'),
                 c['default_config_ratio']))

    lines = [
        '# Benchmark results',
        '',
        'Generated by `bench/report.py`; do not edit. Reproduce with:',
        '',
        '```sh',
        'bash build/install-deps.sh     # wrk, nginx-light (the baseline), taskset',
        'NP_BUNDLE=dist/nginx-portable /usr/bin/python3 bench/report.py',
        '```',
        '',
        'Every figure is compared with a baseline measured **in the same run on the same machine**;',
        'throughput figures are medians of %d alternating runs of %d s (wrk `-t1 -c32`), with the' % (runs, seconds),
        'nginx under test running 1 worker pinned to CPU 0 (`worker_cpu_affinity 01`) and wrk pinned',
        'to CPU 1 (`taskset -c 1`); the traffic-status pair (bench/traffic-status) is unpinned and',
        'reports the median of per-round ratios. Ratio = ours / baseline (for req/s higher is better,',
        'for times, CPU and sizes lower is better).',
        '',
        '| | |', '|---|---|',
        '| date | %s |' % info['date'],
        '| machine | %s, %d CPUs, %s GB RAM, kernel %s, %s |' % (info['cpu'], info['cpus'], info['mem_gb'],
                                                               info['kernel'], info['os']),
        '| load average (1 min) before / after | %s / %s (the machine is shared: other builds and tests may run) |'
        % (info['load_before'], info['load_after']),
        '| bundle | %s (git %s) |' % (info['bundle_nginx'].replace('nginx version: ', ''), info['git']),
        '| baseline | %s |' % info['debian_nginx'].replace('nginx version: ', ''),
        '| wrk | %s |' % info['wrk'],
        '| run time | %s min |' % info['minutes'],
        '',
        '| figure | ours | baseline (same run) | ratio |',
        '|---|---|---|---|',
    ]
    for name, ours, base, ratio in rows:
        lines.append('| %s | %s | %s | %s |' % (name, ours, base, ratio))
    lines += [
        '',
        '## How each figure is measured',
        '',
        '- **Static / proxied**: `bench/static/bench_static.py`, `bench/compare/bench_proxy.py`: the same',
        '  config on both binaries (a ~600-byte file; `proxy_pass` to a keep-alive upstream served by a',
        '  Debian nginx `return 200`).',
        '- **traffic-status**: `bench/traffic-status/bench.py`: two fronts of the bundle, without the',
        '  zone and with `vhost_traffic_status_zone` + `filter_by_host`; CPU per request from `/proc`.',
        '  Render: 1000 Host zones + 1000 peers, median of 20 GETs.',
        '- **Health checks vs client throughput**: `bench/compare/bench_hc_load.py`: two fronts, with and',
        '  without `spawn_checker` on the 20-peer upstream they proxy to.',
        '- **/metrics render**: `bench/compare/bench_metrics_render.py`: the default config\'s `/metrics`',
        '  location verbatim (health checker + traffic status), an upstream of N peers, all checked and all',
        '  with traffic; median of 30 GETs on one keep-alive connection; baseline a `content_by_lua` "ok"',
        '  on the same server and connection.',
        '- **Checker CPU**: `bench/healthcheck/bench_healthcheck.py`\'s measure(): utime+stime of master',
        '  and worker over the window, checker config vs the same config without the checker.',
        '- **Size / cold start**: `bench/compare/bench_startup.py`: file sizes (`ldd` for Debian\'s',
        '  libraries); wall time from exec to the first 200 (median of several starts on fresh prefixes;',
        '  the default config on moved ports, to the first proxied `/api/hello`).',
        '',
        '## Raw numbers',
        '',
        'Seconds per step: %s' % ', '.join('%s %d' % kv for kv in took.items()),
        '',
        '```json',
        json.dumps(r, indent=1, default=str),
        '```',
        '',
    ]
    # Sections other benchmarks write into RESULTS.md themselves (between
    # <!-- section:NAME --> and <!-- /section:NAME -->, e.g. the before/after
    # figures of bench/compare/bench_startcost.py) are kept as they are.
    old = (HERE / 'RESULTS.md').read_text() if (HERE / 'RESULTS.md').exists() else ''
    kept = re.findall(r'^<!-- section:(\S+) -->\n.*?^<!-- /section:\1 -->\n', old, re.M | re.S)
    for name in kept:
        block = re.search(r'^<!-- section:%s -->\n.*?^<!-- /section:%s -->\n' % (name, name), old, re.M | re.S)
        lines.append(block.group(0))
    (HERE / 'RESULTS.md').write_text('\n'.join(lines))
    print('wrote %s' % (HERE / 'RESULTS.md'), file=sys.stderr)


if __name__ == '__main__':
    main()
