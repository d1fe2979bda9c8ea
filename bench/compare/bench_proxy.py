#!/usr/bin/env python3
"""Proxied requests: the bundle vs Debian's nginx (nginx-light), both as a
reverse proxy (keep-alive upstream) in front of the same backend, same worker
settings (1 worker pinned to CPU 0, wrk pinned to CPU 1), alternating runs.
Prints one JSON line: medians and the ratio bundle/debian."""
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from common import Server, alternate, main_conf, wrk  # noqa: E402

DEBIAN_NGINX = '/usr/sbin/nginx'
PORT_OURS, PORT_DEB, PORT_BACKEND = 18191, 18192, 18193


def front_conf(port):
    return main_conf(f'''
    upstream app {{ server 127.0.0.1:{PORT_BACKEND}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}''')


def backend_conf():
    # the backend is Debian's nginx for both fronts, unpinned
    return main_conf(f'''
    server {{
        listen 127.0.0.1:{PORT_BACKEND};
        location / {{ return 200 "0123456789abcdef0123456789abcdef\\n"; }}
    }}''', affinity=False)


def run(runs=5, seconds=4):
    if not shutil.which('wrk') or not os.path.exists(DEBIAN_NGINX):
        sys.exit('needs wrk and nginx-light (bash build/install-deps.sh)')
    backend = Server(backend_conf(), binary=DEBIAN_NGINX).start(PORT_BACKEND)
    ours = deb = None
    try:
        ours = Server(front_conf(PORT_OURS)).start(PORT_OURS)
        deb = Server(front_conf(PORT_DEB), binary=DEBIAN_NGINX).start(PORT_DEB)
        for port in (PORT_OURS, PORT_DEB):          # warm-up
            wrk('http://127.0.0.1:%d/' % port, seconds=1, cpu=1)
        (m_ours, m_deb), raw = alternate(
            runs,
            lambda: wrk('http://127.0.0.1:%d/' % PORT_OURS, seconds=seconds, cpu=1),
            lambda: wrk('http://127.0.0.1:%d/' % PORT_DEB, seconds=seconds, cpu=1))
    finally:
        for s in (ours, deb, backend):
            if s:
                s.stop()
    return {'bench': 'proxied-200', 'bundle_rps': m_ours, 'debian_nginx_light_rps': m_deb,
            'ratio': round(m_ours / m_deb, 3), 'runs': raw}


def main():
    r = run(int(os.environ.get('BENCH_RUNS', '5')), int(os.environ.get('BENCH_SECONDS', '4')))
    print(json.dumps(r))
    return r


if __name__ == '__main__':
    main()
