"""nginx 1.29.7+ keeps connections to backends alive by default.  A backend
that reloads (or restarts, or times an idle connection out) closes them, and
a request already on its way over such a cached connection fails.  Stock
nginx counts that as a failure of the peer: with the default max_fails=1,
two such races disable both peers of a group for fail_timeout and clients
get 502 "no live upstreams" from healthy backends.  The bundle's patch
(build/patches/nginx/0001-*) retries on a new connection without counting
a failure, to the same peer too (its only live peer while the other one is
dead): a backend reloaded under load costs no client an error."""
import re
import signal
import subprocess
import time

import pytest

from conftest import conf_wrap, free_port

BACKEND = '''
    server {
        listen 127.0.0.1:%d;
        listen 127.0.0.1:%d;
        keepalive_requests 100000;
        location / { return 200 "ok\\n"; }
    }'''

FRONT = '''
    upstream app {
        server 127.0.0.1:%d;
        server 127.0.0.1:%d;
    }
    server {
        listen 127.0.0.1:%d;
        location / { proxy_pass http://app; }
    }'''

RELOADS, EVERY = 12, 0.5


@pytest.mark.skipif(not subprocess.run(['which', 'wrk'], capture_output=True).returncode == 0,
                    reason='wrk missing: bash build/install-deps.sh')
@pytest.mark.parametrize('other_peer', ['live', 'dead'])
def test_backend_reloads_under_keepalive_load_cost_no_client_an_error(nginx_factory, other_peer):
    """Both peers on one backend nginx that reloads; or one peer on it and
    the other dead (refused: out for fail_timeout after its first failure),
    so a broken cached connection's retry can only go to the same peer."""
    p1, p2, front = free_port(), free_port(), free_port()
    served = (p1, p2) if other_peer == 'live' else (p1, free_port())
    backend = nginx_factory(conf_wrap(BACKEND % served, workers=2), name='backend', workers=2,
                            wait_ports=[('127.0.0.1', p) for p in served])
    f = nginx_factory(conf_wrap(FRONT % (p1, p2, front)), name='front',
                      wait_ports=[('127.0.0.1', front)])
    seconds = int(RELOADS * EVERY) + 2
    wrk = subprocess.Popen(['wrk', '-t1', '-c8', '-d%ds' % seconds, '--timeout', '5s',
                            'http://127.0.0.1:%d/' % front],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)                                   # load flowing, connections cached
    for _ in range(RELOADS):
        backend.signal(signal.SIGHUP)
        time.sleep(EVERY)
    out, err = wrk.communicate(timeout=seconds + 30)
    requests = int(re.search(r'(\d+) requests in', out).group(1))
    errors = re.search(r'Non-2xx or 3xx responses: (\d+)', out)
    assert requests > 1000, out + err
    log = f.error_log
    assert errors is None, '%s of %d requests failed; front error.log:\n%s' % (
        errors.group(1), requests, '\n'.join(log.splitlines()[-15:]))
    assert 'no live upstreams' not in log
    if other_peer == 'live':
        assert 'upstream server temporarily disabled' not in log
