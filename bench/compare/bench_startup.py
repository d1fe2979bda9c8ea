#!/usr/bin/env python3
"""Cold start time and binary size, the bundle vs Debian's nginx (nginx-light).

Cold start: wall time from exec of `nginx` (daemon, 1 worker) on a fresh
prefix to the first 200 answer, median of N starts.  Measured for the same
minimal static config on both binaries, and for the bundle's default config
(Lua VM, health checkers, traffic status, TLS demo backends; ports moved off
8080/18080/18081) to the first proxied 200.

Size: the bundle's sbin/nginx (static-pie, stripped, everything inside) vs
/usr/sbin/nginx alone and with the shared libraries it loads (ldd).
Prints one JSON line each."""
import http.client
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from common import BUNDLE, Server, main_conf  # noqa: E402

DEBIAN_NGINX = '/usr/sbin/nginx'
PORT = 18199
MOVED = {'listen 8080;': 'listen 127.0.0.1:28080;', '18080': '28180', '18081': '28181',
         ':8080': ':28090'}


def first_200(port, path, deadline):
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection('127.0.0.1', port, timeout=1)
            c.request('GET', path)
            if c.getresponse().status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.002)
    return False


def default_conf_files():
    files = {}
    conf = pathlib.Path(BUNDLE) / 'conf'
    for p in conf.rglob('*'):
        if p.is_file() and p.name != 'mime.types':
            data = p.read_bytes()
            if p.suffix == '.conf':
                text = data.decode()
                for a, b in MOVED.items():
                    text = text.replace(a, b)
                data = text.encode()
            files['conf/' + str(p.relative_to(conf))] = data
    return files


def cold(binary, conf_text, files, port, path, n):
    times = []
    for _ in range(n):
        s = Server(conf_text, binary=binary, files=files)
        try:
            t0 = time.monotonic()
            subprocess.run([s.binary, '-p', str(s.dir) + '/', '-c', 'conf/nginx.conf',
                            '-e', 'logs/error.log'], check=True, env=s.env)
            if not first_200(port, path, t0 + 30):
                raise RuntimeError('no 200 from %s' % binary)
            times.append((time.monotonic() - t0) * 1000)
        finally:
            s.stop()
    return statistics.median(times), times


def static_conf():
    return main_conf('''
    server {
        listen 127.0.0.1:%d;
        location / { return 200 "ok\\n"; }
    }''' % PORT)


def run_startup(n=9):
    files = {'html/index.html': 'ok\n'}
    ours, ours_raw = cold(None, static_conf(), files, PORT, '/', n)
    deb, deb_raw = cold(DEBIAN_NGINX, static_conf(), files, PORT, '/', n)
    dfiles = default_conf_files()
    dconf = dfiles.pop('conf/nginx.conf').decode()
    dconf = dconf.replace('worker_processes auto;', 'worker_processes 1;')
    full, full_raw = cold(None, dconf, dfiles, 28080, '/api/hello', n)
    return {'bench': 'cold-start', 'bundle_ms': round(ours, 1), 'debian_nginx_light_ms': round(deb, 1),
            'ratio': round(ours / deb, 2), 'bundle_default_config_ms': round(full, 1),
            'default_config_ratio': round(full / deb, 2),
            'runs': {'bundle': ours_raw, 'debian': deb_raw, 'bundle_default_config': full_raw}}


def ldd_libs(binary):
    out = subprocess.run(['ldd', binary], capture_output=True, text=True).stdout
    libs = set()
    for line in out.splitlines():
        m = re.search(r'=>\s+(/\S+)', line) or re.match(r'\s*(/\S+)', line)
        if m:
            libs.add(os.path.realpath(m.group(1)))
    return sorted(libs)


def run_size():
    ours = os.path.getsize(pathlib.Path(BUNDLE) / 'sbin' / 'nginx')
    deb = os.path.getsize(DEBIAN_NGINX)
    libs = ldd_libs(DEBIAN_NGINX)
    deb_all = deb + sum(os.path.getsize(p) for p in libs)
    return {'bench': 'binary-size', 'bundle_bytes': ours, 'debian_nginx_light_bytes': deb,
            'ratio': round(ours / deb, 2), 'debian_with_shared_libs_bytes': deb_all,
            'ratio_with_libs': round(ours / deb_all, 2), 'debian_shared_libs': libs}


def main():
    for r in (run_size(), run_startup(int(os.environ.get('BENCH_STARTS', '9')))):
        print(json.dumps(r))


if __name__ == '__main__':
    main()
