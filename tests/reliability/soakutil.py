"""Helpers for the reliability tests: the bundle's default configuration
(conf/nginx.conf with its demo backends), wrk, log checks."""
import re
import shutil
import signal
import subprocess
import time

import pytest

from support.bundle import CRASH_MARKERS, Nginx, copy_bundle
from support.net import http_get, port_open, wait_for
from support.probes import get_json, peer_states

PROXY, METRICS, CONTROL, PROBE = 8080, 18080, 18081, 18089
FOO = ['127.0.1.11:8080', '127.0.1.12:8080']
BAR = ['127.0.2.11:8080', '127.0.2.12:8080']
PEERS = FOO + BAR

# A test-only server added next to the default config: shm usage and the
# answering worker's pid.  Nothing else of the default config changes.
PROBE_CONF = """
server {
    listen 127.0.0.1:%d;
    access_log off;
    default_type text/plain;
    location = /shm {
        content_by_lua_block {
            local d = ngx.shared.healthcheck
            local keys = d:get_keys(0)
            table.sort(keys)
            ngx.say(d:capacity() - d:free_space())
            for _, k in ipairs(keys) do ngx.say(k) end
        }
    }
    location = /pid { content_by_lua_block { ngx.say(ngx.worker.pid()) } }
}
""" % PROBE

# Lines that must never appear in the error log of a healthy instance.
BAD_LOG = re.compile(r'\[(alert|crit|emerg)\]|' + '|'.join(map(re.escape, CRASH_MARKERS)))


def bad_log_lines(text, allow=()):
    out = []
    for line in text.splitlines():
        if BAD_LOG.search(line) and not any(re.search(a, line) for a in allow):
            out.append(line)
    return out


def default_ports_free():
    return not any(port_open('127.0.0.1', p) for p in (PROXY, METRICS, CONTROL, PROBE))


def start_default(tmp_path, name='bundle'):
    """A copy of the bundle started on its own conf/nginx.conf (plus the probe)."""
    if not default_ports_free():
        pytest.skip('the default ports (8080/18080/18081) are taken on this machine')
    dest = copy_bundle(tmp_path / name)
    conf = dest / 'conf' / 'nginx.conf'
    (dest / 'conf' / 'reliability_probe.conf').write_text(PROBE_CONF)
    text = conf.read_text().rstrip()
    assert text.endswith('}')
    conf.write_text(text[:-1] + '    include reliability_probe.conf;\n}\n')
    n = Nginx(dest)
    r = n.run()
    assert r.returncode == 0, r.stderr + n.error_log
    wait_for(n.master_pid, what='pid file')
    for port in (PROXY, METRICS, CONTROL, PROBE):
        wait_for(lambda: port_open('127.0.0.1', port), what='port %d' % port)
    return n


def status():
    """{peer: 'UP'|'DOWN'} from the health checker's status page."""
    return peer_states(METRICS)


def metrics():
    return http_get('127.0.0.1', METRICS, '/metrics', timeout=10)[2].decode()


def vts():
    return get_json(METRICS, '/traffic/format/json', timeout=10)


def hc_shm():
    """(bytes used by the healthcheck dict, [keys])"""
    lines = http_get('127.0.0.1', PROBE, '/shm')[2].decode().split('\n')
    return int(lines[0]), [k for k in lines[1:] if k]


def kill(peer):
    assert http_get('127.0.0.1', CONTROL, '/demo/kill?backend=' + peer, method='POST')[0] == 200


def revive(peer):
    assert http_get('127.0.0.1', CONTROL, '/demo/revive?backend=' + peer, method='POST')[0] == 200


def backend_of(path):
    st, headers, _ = http_get('127.0.0.1', PROXY, path)
    assert st == 200, st
    return headers.get('x-demo-backend')


def stop(n, timeout=30):
    n.stop(timeout=timeout)


# -- wrk --------------------------------------------------------------------

def wrk_start(url, seconds, conns=8, host=None, close=True, timeout='10s', cpu=None):
    cmd = ['wrk', '-t1', '-c%d' % conns, '-d%ds' % seconds, '--timeout', timeout]
    if host:
        cmd += ['-H', 'Host: ' + host]
    if close:
        # one request per connection: a keep-alive connection closed by a
        # worker that exits at reload races with the client's next request
        # (an error no server can avoid); this keeps the error count meaningful
        cmd += ['-H', 'Connection: close']
    cmd.append(url)
    if cpu is not None and shutil.which('taskset'):
        cmd = ['taskset', '-c', str(cpu)] + cmd
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wrk_result(proc, timeout):
    out, err = proc.communicate(timeout=timeout)
    m = re.search(r'(\d+) requests in', out)
    assert m, 'wrk output:\n' + out + err
    res = {'requests': int(m.group(1)), 'non2xx': 0, 'socket_errors': 0, 'out': out}
    e = re.search(r'Non-2xx or 3xx responses: (\d+)', out)
    if e:
        res['non2xx'] = int(e.group(1))
    s = re.search(r'Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)', out)
    if s:
        res['socket_errors'] = sum(int(x) for x in s.groups())
    r = re.search(r'Requests/sec:\s+([\d.]+)', out)
    res['rps'] = float(r.group(1)) if r else 0.0
    return res


def workers_settled(n, count):
    """Only `count` workers left, none shutting down."""
    mp = n.master_pid()
    out = subprocess.run(['ps', '-o', 'pid=,args=', '--ppid', str(mp)], capture_output=True,
                         text=True).stdout
    procs = [l for l in out.splitlines() if 'worker process' in l]
    return len(procs) == count and not any('shutting down' in l for l in procs)


def hup(n):
    n.signal(signal.SIGHUP)


def now():
    return time.monotonic()
