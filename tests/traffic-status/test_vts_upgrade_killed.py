"""traffic-status, issue 26 item 9: a binary upgrade whose old master is
SIGKILLed (no exit dump).  The new master merges the old master's last
periodic dump, and its own counts survive its own restart.

The old master runs in the foreground as this test's child, which does not
reap it at once: killed, it stays a zombie, as under a parent that never
waits (a shell, a container's init).  A zombie answers kill(pid, 0); the
new generation took that for a live old master, waited for its final dump
forever and, meanwhile, wrote no dump of its own."""
import ctypes
import os
import signal
import time

from conftest import free_port, wait_for
from test_vts_upgrade import KEEPALIVE, children, counted
from vts_util import counted_and_status, many_requests


def zombie_or_gone(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] in ('Z', 'X')
    except OSError:
        return True


def kill_generation(master):
    workers = children(master, 'worker')
    os.kill(master, signal.SIGKILL)
    for w in workers:
        os.kill(w, signal.SIGKILL)
    wait_for(lambda: all(zombie_or_gone(p) for p in [master] + workers), timeout=10,
             what='generation of %d killed' % master)


def subreaper(on):
    """While on, daemons started by this process become its children (and
    stay zombies once killed, until it waits for them)."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(36, 1 if on else 0, 0, 0, 0) == 0    # PR_SET_CHILD_SUBREAPER


def test_killed_old_master_dump_is_merged_and_kept(nginx_factory, tmp_path):
    fport, sport = free_port(), free_port()
    dumpdir = tmp_path / 'dump'
    dumpdir.mkdir()
    dumpdir.chmod(0o777)                       # workers run as nobody under root
    conf = counted_and_status(fport, sport, workers=2, http=f"""
    vhost_traffic_status_zone shared:vts:4m;
    vhost_traffic_status_dump {dumpdir / 'vts.db'} 1s;""")
    n = nginx_factory(conf, start=False)
    subreaper(True)
    try:
        n.start(wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    finally:
        subreaper(False)
    old = n.master_pid()
    try:
        wait_for(lambda: len(children(old)) == 2, timeout=15, what='old workers')
        assert many_requests(fport, [KEEPALIVE] * 200) == 200
        time.sleep(2.5)                        # a periodic dump holds the 200

        os.kill(old, signal.SIGUSR2)
        wait_for(lambda: n.master_pid() not in (None, old), timeout=15, what='new master')
        new = n.master_pid()
        wait_for(lambda: len(children(new)) == 2, timeout=15, what='new workers')
        kill_generation(old)                   # no exit dump; stays a zombie
        assert many_requests(fport, [KEEPALIVE] * 50) == 50
        # main: 50 for the new master's whole life
        wait_for(lambda: counted(sport) == 250, timeout=10, what='old dump merged: 250')
        time.sleep(2.5)                        # the new generation's periodic dump
        kill_generation(new)                   # no exit dump either
    finally:
        try:
            os.kill(old, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(old, 0)                     # reap the zombie
    (n.prefix / 'logs' / 'nginx.pid').unlink()
    n.start(wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    assert counted(sport) == 250               # main: the old master's 200 only
