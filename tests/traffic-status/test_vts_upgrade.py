"""traffic-status: counts survive a binary upgrade under load (issue 13,
case 5): 200 requests, USR2, WINCH, 100 requests, QUIT the old master; the
new master ends with the old one's final counts plus its own, while a client
keeps sending requests through the whole upgrade."""
import os
import signal
import socket
import subprocess
import threading

from conftest import free_port, wait_for
from support.net import process_gone
from vts_util import counted_and_status, get_json, many_requests, req, status_of

KEEPALIVE = b'GET / HTTP/1.1\r\nHost: default.test\r\n\r\n'


def upgrade_conf(fport, sport, dump):
    return counted_and_status(fport, sport, workers=2, http=f"""
    vhost_traffic_status_zone shared:vts:4m;
    vhost_traffic_status_dump {dump} 3600s;""")


class Load:
    """One client sending requests (a new connection each) until stopped;
    counts the 200s it read."""

    def __init__(self, port):
        self.port, self.ok, self.errors = port, 0, 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self):
        while not self.stopping.is_set():
            try:
                with socket.create_connection(('127.0.0.1', self.port), timeout=10) as s:
                    s.sendall(req('/', 'default.test'))
                    data = b''
                    while True:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                if data.endswith(b'ok\n') and status_of(data) == 200:
                    self.ok += 1
                else:
                    self.errors += 1
            except OSError:
                self.errors += 1

    def stop(self):
        self.stopping.set()
        self.thread.join()
        return self.ok


def children(pid, what='worker process'):
    out = subprocess.run(['ps', '-o', 'pid=,args=', '--ppid', str(pid)],
                         capture_output=True, text=True).stdout
    return [int(l.split()[0]) for l in out.splitlines() if what in l]


def gone(pid):
    return process_gone(pid)


def counted(sport):
    zones = get_json(sport)['serverZones']
    return zones.get('default.test', {}).get('requestCounter', 0)


def test_counts_survive_a_binary_upgrade_under_load(nginx_factory, tmp_path):
    fport, sport = free_port(), free_port()
    dumpdir = tmp_path / 'dump'
    dumpdir.mkdir()
    dumpdir.chmod(0o777)                       # workers run as nobody under root
    n = nginx_factory(upgrade_conf(fport, sport, dumpdir / 'vts.db'), workers=2,
                      wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    old = n.master_pid()
    assert many_requests(fport, [KEEPALIVE] * 200) == 200
    assert counted(sport) == 200

    load = Load(fport)
    try:
        n.signal(signal.SIGUSR2)
        wait_for(lambda: n.master_pid() not in (None, old), timeout=15, what='new master')
        new = n.master_pid()
        wait_for(lambda: len(children(new)) == 2, timeout=15, what='new workers')
        os.kill(old, signal.SIGWINCH)
        wait_for(lambda: not children(old, 'worker'), timeout=15, what='old workers to exit')
        assert many_requests(fport, [KEEPALIVE] * 100) == 100
        os.kill(old, signal.SIGQUIT)
        wait_for(lambda: gone(old), timeout=15, what='old master to exit')
    finally:
        during = load.stop()
    assert during > 0 and load.errors == 0, (during, load.errors)
    total = 200 + 100 + during
    # the new master merges the old master's exit dump once it appears (polled every second)
    wait_for(lambda: counted(sport) == total, timeout=10,
             what='new master to count %d (old + new)' % total)
    assert n.master_pid() == new
    assert 'merged' in n.error_log

    # and the new master's own exit dump carries the whole total
    n.stop()
    n.start(wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    assert counted(sport) == total
