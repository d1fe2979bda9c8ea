#!/usr/bin/env python3
"""Do two bundles render the same traffic-status data alike?  For speed work
on the views (issue 29): the output must not change, only its cost.

One nginx of bundle A counts traffic (Host zones with awkward names, filter
zones, an upstream of PEERS peers, several statuses, histogram buckets,
measure_status_codes) and saves its zone in a dump at shutdown.  Then A and
B each start from a copy of that dump with the same config and render every
view; the bodies must be equal byte for byte, except the fields that say
when or how busy the render was (nowMsec, loadMsec, connections, the
Prometheus view's ones of those), which are blanked in both first.

Usage: python3 bench/traffic-status/compare_views.py OLD_BUNDLE NEW_BUNDLE
       [--hosts 300] [--peers 50]
Prints one JSON line; exits 1 when a view differs.
"""
import argparse
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from common import wait_port  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'callgrind'))
from bench_instructions import free_port, read_answer  # noqa: E402

VIEWS = ['/status/format/json', '/status/format/jsonp?callback=cb', '/status/format/prometheus',
         '/status/control?cmd=status&group=server&zone=*',
         '/status/control?cmd=status&group=upstream@group&zone=*',
         '/status/control?cmd=status&group=filter&zone=*']
# when the render ran and the connections it found: not the data
VOLATILE = [rb'"(nowMsec|loadMsec)":\d+', rb'"connections":\{[^}]*\}',
            rb'nginx_vts_(info|start_time_seconds|main_connections)[^\n]*\n']


def conf(port, peer_ports, dump):
    servers = ''.join('\n        server 127.0.0.1:%d;' % p for p in peer_ports)
    return f"""
daemon on;
worker_processes 1;
pid logs/nginx.pid;
error_log logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    vhost_traffic_status_zone shared:vts:32m;
    vhost_traffic_status_dump {dump} 3600s;
    vhost_traffic_status_filter_by_host on;
    vhost_traffic_status_filter_max_node 100000;
    vhost_traffic_status_histogram_buckets 0.005 0.01 0.05 0.1 0.5 1 5;
    vhost_traffic_status_measure_status_codes 200 204 404 500;
    upstream many {{{servers}
    }}
    upstream alone_group {{ server 127.0.0.1:{peer_ports[0]} backup; server 127.0.0.1:{peer_ports[1]}; }}
    server {{
        listen 127.0.0.1:{port};
        vhost_traffic_status_filter_by_set_key $uri uris::$host;
        location /status {{ vhost_traffic_status off; vhost_traffic_status_display; }}
        location /p/ {{ proxy_pass http://many; }}
        location /q/ {{ proxy_pass http://alone_group; }}
        location /s404 {{ return 404; }}
        location /s500 {{ return 500; }}
        location / {{ return 204; }}
    }}
}}
"""


def backend_conf(ports):
    listens = ''.join('\n        listen 127.0.0.1:%d;' % p for p in ports)
    return f"""
daemon on;
worker_processes 1;
pid logs/nginx.pid;
error_log logs/error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; server {{{listens}
        location / {{ return 200 "ok\\n"; }} }} }}
"""


class Nginx:
    def __init__(self, bundle, base, name, text):
        self.bundle, self.dir = pathlib.Path(bundle), pathlib.Path(base) / name
        for d in ('conf', 'logs', 'temp'):
            (self.dir / d).mkdir(parents=True)
        (self.dir / 'lualib').symlink_to(self.bundle.resolve() / 'lualib')
        (self.dir / 'conf' / 'nginx.conf').write_text(text)

    def run(self, *args):
        r = subprocess.run([str(self.bundle / 'sbin' / 'nginx'), '-p', str(self.dir) + '/',
                        "-c", "conf/nginx.conf", *args], capture_output=True)
        if r.returncode:
            raise RuntimeError(r.stderr.decode())

    def stop(self):
        try:
            self.run('-s', 'quit')
        except RuntimeError:
            return
        pid = self.dir / 'logs' / 'nginx.pid'
        for _ in range(400):
            if not pid.exists():
                return
            subprocess.run(['sleep', '0.05'])


def requests(port, raws):
    """the answers' bodies (None for answers that are not renders), one
    connection each (a bad Host ends its connection)"""
    out = []
    for raw in raws:
        with socket.create_connection(('127.0.0.1', port), timeout=60) as s:
            f = s.makefile('rb')
            s.sendall(raw)
            out.append(read_answer(f) if b'/status' in raw else f.read())
    return out


def get(path, host='status.test'):
    close = b'' if path.startswith('/status') else b'Connection: close\r\n'
    return b'GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n' % (path.encode(), host.encode(), close)


def traffic(nhosts, npeers):
    names = ['h%04d.example' % i for i in range(nhosts)]
    names += ['odd"quote', 'back\\slash', 'caf\xc3\xa9'.encode('latin-1').decode('latin-1'), '_', '*']
    raws = []
    for i, h in enumerate(names):
        path = ('/p/%d' % i, '/q/x', '/s404', '/s500', '/')[i % 5]
        raws.append(get(path, h))
    raws += [get('/p/%d' % i, 'peers.example') for i in range(2 * npeers)]
    return raws


def render_all(bundle, base, name, port, peer_ports, dump):
    n = Nginx(bundle, base, name, conf(port, peer_ports, dump))
    n.run()
    try:
        wait_port('127.0.0.1', port)
        return dict(zip(VIEWS, requests(port, [get(v) for v in VIEWS])))
    finally:
        n.stop()


def blank(body):
    for pat in VOLATILE:
        body = re.sub(pat, b'<volatile>', body)
    return body


def no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError('duplicate key in %r' % keys[:5])
    return dict(pairs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('old')
    ap.add_argument('new')
    ap.add_argument('--hosts', type=int, default=300)
    ap.add_argument('--peers', type=int, default=50)
    a = ap.parse_args()
    base = tempfile.mkdtemp(prefix='np-cmp-')
    os.chmod(base, 0o777)                         # workers run as nobody under root
    peer_ports = []
    while len(peer_ports) < a.peers:
        p = free_port()
        if p not in peer_ports:
            peer_ports.append(p)
    backend = Nginx(a.old, base, 'backend', backend_conf(peer_ports))
    backend.run()
    try:
        wait_port('127.0.0.1', peer_ports[0])
        port = free_port()
        counter = Nginx(a.old, base, 'counter', conf(port, peer_ports, base + '/counted.dump'))
        counter.run()
        try:
            wait_port('127.0.0.1', port)
            requests(port, traffic(a.hosts, a.peers))
        finally:
            counter.stop()
        out = {}
        for tag, bundle in (('old', a.old), ('new', a.new)):
            shutil.copy(base + '/counted.dump', base + '/%s.dump' % tag)
            os.chmod(base + '/%s.dump' % tag, 0o666)
            out[tag] = render_all(bundle, base, tag, free_port(), peer_ports, base + '/%s.dump' % tag)
    finally:
        backend.stop()
        shutil.rmtree(base, ignore_errors=True)
    result = {'bench': 'compare_views', 'hosts': a.hosts, 'peers': a.peers, 'views': {}}
    same = True
    for v in VIEWS:
        o, n = blank(out['old'][v]), blank(out['new'][v])
        if v.endswith('json'):
            json.loads(out['new'][v], object_pairs_hook=no_duplicates)
        result['views'][v] = {'bytes': len(out['new'][v]), 'identical': o == n}
        same = same and o == n
    # the data was there to compare: every host, every peer
    js = out['new']['/status/format/json'].decode()
    result['host_zones'] = len(re.findall(r'"h\d{4}\.example":', js))
    result['peers_listed'] = js.count('"server":"127.0.0.1:')
    doc = json.loads(js)
    result['requests_in_server_zones'] = sum(z['requestCounter'] for k, z in doc['serverZones'].items()
                                             if k != '*')
    result['identical'] = same and result['host_zones'] == a.hosts
    print(json.dumps(result))
    sys.exit(0 if result['identical'] else 1)


if __name__ == '__main__':
    main()
