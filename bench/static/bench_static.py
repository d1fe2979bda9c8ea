#!/usr/bin/env python3
"""Bundle vs Debian's packaged nginx (nginx-light), both serving the same small
static file on loopback with the same worker settings (1 worker pinned to CPU 0,
wrk pinned to CPU 1).  Reports medians and the ratio bundle/debian."""
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from common import Server, alternate, main_conf, wrk  # noqa: E402

DEBIAN_NGINX = '/usr/sbin/nginx'
PORT_OURS, PORT_DEB = 18181, 18182
INDEX = '<!doctype html><title>ok</title><p>' + 'x' * 560 + '\n'   # ~600 bytes


def conf(port):
    return main_conf(f'''
    server {{
        listen 127.0.0.1:{port} reuseport;
        root html;
        location / {{ }}
    }}''')


def main():
    if not shutil.which('wrk') or not os.path.exists(DEBIAN_NGINX):
        sys.exit('needs wrk and nginx-light (bash build/install-deps.sh)')
    runs = int(os.environ.get('BENCH_RUNS', '5'))
    seconds = int(os.environ.get('BENCH_SECONDS', '4'))
    ours = Server(conf(PORT_OURS), files={'html/index.html': INDEX}).start(PORT_OURS)
    deb = Server(conf(PORT_DEB), binary=DEBIAN_NGINX, files={'html/index.html': INDEX}).start(PORT_DEB)
    try:
        for port in (PORT_OURS, PORT_DEB):          # warm-up
            wrk('http://127.0.0.1:%d/' % port, seconds=1, cpu=1)
        (m_ours, m_deb), raw = alternate(
            runs,
            lambda: wrk('http://127.0.0.1:%d/' % PORT_OURS, seconds=seconds, cpu=1),
            lambda: wrk('http://127.0.0.1:%d/' % PORT_DEB, seconds=seconds, cpu=1))
    finally:
        ours.stop()
        deb.stop()
    result = {'bench': 'static-200', 'bundle_rps': m_ours, 'debian_nginx_light_rps': m_deb,
              'ratio': round(m_ours / m_deb, 3), 'runs': raw}
    print(json.dumps(result))
    return result


if __name__ == '__main__':
    main()
