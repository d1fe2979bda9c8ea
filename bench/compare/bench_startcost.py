#!/usr/bin/env python3
"""Start-up cost, memory, size and TLS handshake cost (issue 29), each
against baselines measured in the same run.

Binaries: the bundle (NP_BUNDLE), optionally an older bundle (--old, for
before/after), a "plain" build (--plain BIN, and --old-plain BIN: the same
nginx, patches, flags and static libraries without ngx_devel_kit,
lua-nginx-module and modules/, built by `NP_PLAIN=1 NP_BUILD_DIR=DIR bash
build/nginx.sh`) and Debian's nginx-light (/usr/sbin/nginx, dynamically
linked, OpenSSL 3.0, no HTTP/3).

  config_test   instructions of `nginx -t` on a minimal configuration (one
                server, `return 200`; no lua_ssl_trusted_certificate), the
                whole process under callgrind
  cold_start    wall time from exec (daemon, 1 worker) to the first 200 on that
                configuration, median of --starts fresh prefixes
  rss           VmRSS of master and worker after the first 200 (median)
  handshake     server instructions per full TLS 1.3 handshake (ECDSA P-256
                certificate, no session reuse), nginx under callgrind
                (master_process off): N_LARGE - N_SMALL handshakes by `openssl
                s_client` (OpenSSL 3.5, --openssl), the difference of the two
                totals per extra handshake.  Groups: the default
                (X25519MLKEM768 first in both OpenSSL 3.5 peers) and
                `ssl_ecdh_curve X25519` (the opt-out; Debian: its default,
                X25519, as its OpenSSL 3.0 has no ML-KEM)
  size          stripped sbin/nginx of the bundles (--size LABEL=BUNDLE...)

Instruction counts do not depend on the machine's load; times do (the load
average is printed with them).

Usage: NP_BUNDLE=dist/nginx-portable python3 bench/compare/bench_startcost.py \\
           [--old DIR] [--plain BIN] [--old-plain BIN] [--openssl BIN] \\
           [--size x86_64=DIR --size aarch64=DIR ...] [--json OUT]
       python3 bench/compare/bench_startcost.py --markdown RESULT.json
           writes the before/after table into bench/RESULTS.md (its own section,
           which bench/report.py keeps)
"""
import argparse
import http.client
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

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BUNDLE = pathlib.Path(os.environ.get('NP_BUNDLE', ROOT / 'dist' / 'nginx-portable'))
DEBIAN = '/usr/sbin/nginx'
N_SMALL, N_LARGE = 4, 34


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def minimal_conf(port, daemon=True):
    return f"""
daemon {'on' if daemon else 'off'};
worker_processes 1;
pid logs/nginx.pid;
error_log logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


class Prefix:
    """A throw-away prefix for one binary (with the bundle's lualib when it has one)."""

    def __init__(self, binary, lualib=None, conf='', files=None):
        self.binary = str(binary)
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix='np-startcost-'))
        os.chmod(self.dir, 0o755)
        for d in ('conf', 'logs', 'temp', 'html'):
            (self.dir / d).mkdir()
        if lualib:
            (self.dir / 'lualib').symlink_to(lualib)
        for name, data in (files or {}).items():
            (self.dir / name).write_bytes(data)
        (self.dir / 'conf' / 'nginx.conf').write_text(conf)

    def cmd(self, *args):
        return [self.binary, '-p', str(self.dir) + '/', '-c', 'conf/nginx.conf', '-e', 'logs/error.log',
                *args]

    def pid(self):
        try:
            return int((self.dir / 'logs' / 'nginx.pid').read_text())
        except (OSError, ValueError):
            return None

    def stop(self):
        pid = self.pid()
        if pid:
            try:
                os.kill(pid, signal.SIGQUIT)
                for _ in range(200):
                    os.kill(pid, 0)
                    time.sleep(0.02)
            except OSError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def callgrind_total(cmd, env=None, during=None):
    """Instructions (Ir) of cmd under callgrind; `during(proc)` runs while it
    does and must make it exit (or it is SIGQUIT after)."""
    with tempfile.TemporaryDirectory(prefix='np-cg-') as d:
        out = pathlib.Path(d) / 'callgrind.out'
        proc = subprocess.Popen(['valgrind', '--tool=callgrind', '--callgrind-out-file=%s' % out, *cmd],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        try:
            if during:
                during(proc)
        finally:
            if during:
                proc.send_signal(signal.SIGQUIT)
            _, err = proc.communicate(timeout=900)
        m = re.search(r'^(?:totals|summary):\s+(\d+)', out.read_text(errors='replace'), re.M)
        if not m:
            raise RuntimeError('no callgrind totals for %s:\n%s' % (cmd, err.decode(errors='replace')[-2000:]))
        return int(m.group(1))


# --- nginx -t ----------------------------------------------------------------

def config_test(binary, lualib):
    p = Prefix(binary, lualib, minimal_conf(free_port()))
    try:
        r = subprocess.run(p.cmd('-t'), capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError('%s -t failed:\n%s' % (binary, r.stderr))
        return callgrind_total(p.cmd('-t'))
    finally:
        p.stop()


# --- start and memory ----------------------------------------------------------

def first_200(port, deadline):
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection('127.0.0.1', port, timeout=1)
            c.request('GET', '/')
            if c.getresponse().status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.001)
    return False


def vmrss_kb(pid):
    for line in open('/proc/%d/status' % pid):
        if line.startswith('VmRSS:'):
            return int(line.split()[1])
    return 0


def children(pid):
    kids = []
    for t in os.listdir('/proc/%d/task' % pid):
        kids += [int(x) for x in open('/proc/%d/task/%s/children' % (pid, t)).read().split()]
    return kids


def start_once(binary, lualib):
    port = free_port()
    p = Prefix(binary, lualib, minimal_conf(port))
    try:
        t0 = time.monotonic()
        subprocess.run(p.cmd(), check=True)
        if not first_200(port, t0 + 30):
            raise RuntimeError('no 200 from %s' % binary)
        ms = (time.monotonic() - t0) * 1000
        for _ in range(100):
            if p.pid():
                break
            time.sleep(0.01)
        master = p.pid()
        worker = children(master)[0]
        return ms, vmrss_kb(master), vmrss_kb(worker)
    finally:
        p.stop()


def starts(binaries, n):
    """Alternating starts of every binary, n rounds: medians per binary."""
    raw = {label: [] for label in binaries}
    for _ in range(n):
        for label, (binary, lualib) in binaries.items():
            raw[label].append(start_once(binary, lualib))
    out = {}
    for label, runs in raw.items():
        out[label] = {'start_ms': round(statistics.median(r[0] for r in runs), 1),
                      'master_rss_kb': statistics.median(r[1] for r in runs),
                      'worker_rss_kb': statistics.median(r[2] for r in runs),
                      'start_ms_runs': [round(r[0], 1) for r in runs]}
    return out


# --- TLS handshakes -------------------------------------------------------------

def make_cert(openssl, d):
    key, crt = d / 'key.pem', d / 'crt.pem'
    subprocess.run([openssl, 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256',
                    '-nodes', '-subj', '/CN=bench.test', '-days', '2', '-keyout', str(key), '-out', str(crt)],
                   check=True, capture_output=True)
    return key.read_bytes(), crt.read_bytes()


def tls_conf(port, curve):
    ecdh = 'ssl_ecdh_curve %s;' % curve if curve else ''
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid logs/nginx.pid;
error_log logs/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate crt.pem;
        ssl_certificate_key key.pem;
        ssl_protocols TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        {ecdh}
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


def handshakes(openssl, port, n):
    groups = set()
    for _ in range(n):
        r = subprocess.run([openssl, 's_client', '-connect', '127.0.0.1:%d' % port, '-tls1_3',
                            '-servername', 'bench.test', '-brief'],
                           input='', capture_output=True, text=True, timeout=120)
        m = re.search(r'(?:Negotiated TLS1.3 group|Server Temp Key|Peer Temp Key): (\S+)', r.stderr + r.stdout)
        if 'CONNECTION ESTABLISHED' not in r.stderr + r.stdout:
            raise RuntimeError('handshake failed:\n' + r.stderr[-1500:])
        groups.add(m.group(1).rstrip(',') if m else '?')
    return groups


def handshake_cost(binary, lualib, openssl, cert, curve):
    key, crt = cert

    def run(n):
        port = free_port()
        p = Prefix(binary, lualib, tls_conf(port, curve), files={'conf/key.pem': key, 'conf/crt.pem': crt})
        seen = set()

        def during(proc):
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(('127.0.0.1', port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            seen.update(handshakes(openssl, port, n))
        try:
            return callgrind_total(p.cmd(), during=during), seen
        finally:
            shutil.rmtree(p.dir, ignore_errors=True)
    small, g1 = run(N_SMALL)
    large, g2 = run(N_LARGE)
    return {'instructions': round((large - small) / (N_LARGE - N_SMALL)), 'groups': sorted(g1 | g2)}


def ratio(a, b):
    return '%.2f' % (a / b) if a and b else ''


def markdown(r):
    """The section of bench/RESULTS.md for one result of this benchmark."""
    ct, st, hs, sz = (r.get('config_test_instructions', {}), r.get('starts', {}), r.get('handshake', {}),
                      r.get('size_bytes', {}))
    mi = lambda n: '%.2f M' % (n / 1e6) if n else ''
    rows = []
    if ct:
        rows.append(('`nginx -t`, minimal config, instructions', mi(ct.get('old')), mi(ct.get('new')),
                     'plain build: %s (before: %s); Debian: %s' % (mi(ct.get('plain')), mi(ct.get('old_plain')),
                                                                    mi(ct.get('debian'))),
                     '%s (before: %s); vs Debian %s' % (ratio(ct.get('new'), ct.get('plain')),
                                                       ratio(ct.get('old'), ct.get('old_plain')),
                                                       ratio(ct.get('new'), ct.get('debian')))))
    if st:
        g = lambda k, f: st.get(k, {}).get(f)
        rows.append(('Cold start to first 200, minimal config, ms (load %s-%s)' % (r['load_before'], r['load_after']),
                     g('old', 'start_ms'), g('new', 'start_ms'),
                     'plain build: %s; Debian: %s' % (g('plain', 'start_ms'), g('debian', 'start_ms')),
                     'vs plain %s, vs Debian %s (before: %s)' % (
                         ratio(g('new', 'start_ms'), g('plain', 'start_ms')),
                         ratio(g('new', 'start_ms'), g('debian', 'start_ms')),
                         ratio(g('old', 'start_ms'), g('debian', 'start_ms')))))
        for who in ('worker', 'master'):
            f = who + '_rss_kb'
            mb = lambda k: '%.1f' % (g(k, f) / 1024) if g(k, f) else ''
            rows.append(('%s RSS after the first 200, minimal config, MB' % who.capitalize(), mb('old'), mb('new'),
                         'plain build: %s; Debian: %s' % (mb('plain'), mb('debian')),
                         'vs Debian %s (before: %s)' % (ratio(g('new', f), g('debian', f)),
                                                        ratio(g('old', f), g('debian', f)))))
    for arch in ('x86_64', 'aarch64'):
        if sz.get('old_' + arch) or sz.get('new_' + arch):
            rows.append(('`sbin/nginx` stripped, %s, bytes' % arch, sz.get('old_' + arch), sz.get('new_' + arch),
                         '', ratio(sz.get('new_' + arch), sz.get('old_' + arch))))
    if hs:
        h = lambda k, c: hs.get(k, {}).get(c, {}).get('instructions')
        deb = h('debian', 'x25519')
        rows.append(('TLS 1.3 handshake (ECDSA P-256), server instructions, X25519MLKEM768 (the default)',
                     mi(h('old', 'default')), mi(h('new', 'default')), 'Debian (X25519): %s' % mi(deb),
                     'vs X25519 same binary: %s (before: %s); vs Debian: %s (before: %s)' % (
                         ratio(h('new', 'default'), h('new', 'x25519')), ratio(h('old', 'default'), h('old', 'x25519')),
                         ratio(h('new', 'default'), deb), ratio(h('old', 'default'), deb))))
        rows.append(('TLS 1.3 handshake, server instructions, `ssl_ecdh_curve X25519`',
                     mi(h('old', 'x25519')), mi(h('new', 'x25519')), 'Debian (X25519): %s' % mi(deb),
                     'vs Debian %s (before: %s)' % (ratio(h('new', 'x25519'), deb), ratio(h('old', 'x25519'), deb))))
    lines = ['<!-- section:startcost -->', '## Start-up, memory, size and TLS handshakes (issue 29)', '',
             'Written by `bench/compare/bench_startcost.py --markdown` (kept by `bench/report.py`); %s.' % r.get('note', ''),
             '', '| figure | before | after | baselines (same run) | ratio |', '|---|---|---|---|---|']
    for row in rows:
        lines.append('| %s |' % ' | '.join('' if c is None else str(c) for c in row))
    lines += ['', '```json', json.dumps(r, indent=1), '```', '<!-- /section:startcost -->', '']
    return '\n'.join(lines)


def write_markdown(result_file):
    r = json.loads(pathlib.Path(result_file).read_text())
    path = ROOT / 'bench' / 'RESULTS.md'
    text = path.read_text()
    section = markdown(r)
    m = re.search(r'^<!-- section:startcost -->\n.*?^<!-- /section:startcost -->\n', text, re.M | re.S)
    text = text[:m.start()] + section + text[m.end():] if m else text.rstrip('\n') + '\n\n' + section
    path.write_text(text)


def main():
    if sys.argv[1:2] == ['--markdown']:
        return write_markdown(sys.argv[2])
    ap = argparse.ArgumentParser()
    ap.add_argument('--old', help='an older bundle directory (before)')
    ap.add_argument('--plain', help='plain build binary (same deps as the bundle)')
    ap.add_argument('--old-plain', help='plain build binary (same deps as --old)')
    ap.add_argument('--openssl', help='an OpenSSL 3.5 CLI (default: the build\'s, from the deps cache)')
    ap.add_argument('--starts', type=int, default=15)
    ap.add_argument('--size', action='append', default=[], metavar='LABEL=BUNDLE')
    ap.add_argument('--skip', action='append', default=[], help='config_test, starts, handshake, size')
    ap.add_argument('--json')
    a = ap.parse_args()

    ours = {'new': (BUNDLE / 'sbin' / 'nginx', BUNDLE / 'lualib')}
    if a.old:
        ours['old'] = (pathlib.Path(a.old) / 'sbin' / 'nginx', pathlib.Path(a.old) / 'lualib')
    everyone = dict(ours)
    if a.plain:
        everyone['plain'] = (a.plain, None)
    if a.old_plain:
        everyone['old_plain'] = (a.old_plain, None)
    if os.path.exists(DEBIAN):
        everyone['debian'] = (DEBIAN, None)
    res = {'bench': 'startcost', 'load_before': open('/proc/loadavg').read().split()[0]}

    if 'config_test' not in a.skip:
        res['config_test_instructions'] = {k: config_test(*v) for k, v in everyone.items()}
        print(json.dumps(res['config_test_instructions']), file=sys.stderr, flush=True)
    if 'starts' not in a.skip:
        res['starts'] = starts(everyone, a.starts)
        print(json.dumps({k: v['start_ms'] for k, v in res['starts'].items()}), file=sys.stderr, flush=True)
    if 'handshake' not in a.skip:
        openssl = a.openssl or subprocess.run(
            ['bash', '-c', '. build/common.sh && echo "$(np_depsdir)/bin/openssl"'],
            cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        with tempfile.TemporaryDirectory() as d:
            cert = make_cert(openssl, pathlib.Path(d))
        hs = {}
        for label, (binary, lualib) in ours.items():
            hs[label] = {'default': handshake_cost(binary, lualib, openssl, cert, None),
                         'x25519': handshake_cost(binary, lualib, openssl, cert, 'X25519')}
            print(json.dumps({label: hs[label]}), file=sys.stderr, flush=True)
        if os.path.exists(DEBIAN):
            hs['debian'] = {'x25519': handshake_cost(DEBIAN, None, openssl, cert, None)}
        res['handshake'] = hs
    if 'size' not in a.skip:
        res['size_bytes'] = {}
        for spec in a.size or ['new=%s' % BUNDLE] + (['old=%s' % a.old] if a.old else []):
            label, _, d = spec.partition('=')
            res['size_bytes'][label] = os.path.getsize(pathlib.Path(d) / 'sbin' / 'nginx')
    res['load_after'] = open('/proc/loadavg').read().split()[0]
    line = json.dumps(res)
    print(line)
    if a.json:
        pathlib.Path(a.json).write_text(line + '\n')


if __name__ == '__main__':
    main()
