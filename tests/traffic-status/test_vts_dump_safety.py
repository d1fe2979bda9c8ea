"""traffic-status: the dump is written safely (issue 13, case 4).

Started as root with `nobody` workers (the default user of a root-started
nginx), the dump's directory writable by the workers: a symlink planted
there never makes the master write through it, and a FIFO at the path
neither blocks the start nor the exit."""
import os
import stat
import subprocess

import pytest

from conftest import Nginx, conf_wrap, free_port, make_prefix, wait_for
from support.net import process_gone, raw_request
from vts_util import req

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='needs root (a root master, nobody workers)')

SECRET = b'root-only secret\n'


def dumped_nginx(tmp_path):
    fport = free_port()
    dumpdir = tmp_path / 'dump'
    dumpdir.mkdir()
    dumpdir.chmod(0o777)                      # the workers (nobody) save there too
    secret = tmp_path / 'secret'
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    dump = dumpdir / 'vts.db'
    text = conf_wrap(f"""
    vhost_traffic_status_zone shared:vts:1m;
    vhost_traffic_status_dump {dump} 3600s;
    server {{
        listen 127.0.0.1:{fport};
        server_name dumped.test;
        location / {{ return 200 "ok\\n"; }}
    }}
""", main='user nobody nogroup;')
    n = Nginx(make_prefix(tmp_path / 'n', text))
    return n, fport, dump, secret


def start_bounded(n, timeout=10):
    """nginx's start, which must return (a FIFO once blocked it in open())."""
    try:
        r = n.run(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail('nginx did not finish starting within %ds' % timeout)
    assert r.returncode == 0, r.stderr + n.error_log
    wait_for(n.master_pid, what='pid file')


def test_a_symlink_at_the_temporary_name_is_never_followed(tmp_path):
    n, fport, dump, secret = dumped_nginx(tmp_path)
    start_bounded(n)
    raw_request(fport, req('/'))
    pid = n.master_pid()
    # what an unprivileged user could plant: the old temporary name
    # (PATH.<master pid>.tmp) and a few more pids around it
    for p in range(pid - 2, pid + 40):
        os.symlink(secret, '%s.%d.tmp' % (dump, p))
    n.stop()
    assert secret.read_bytes() == SECRET
    assert stat.S_ISREG(os.lstat(dump).st_mode) and dump.stat().st_size > 24
    assert oct(dump.stat().st_mode & 0o777) == oct(0o600)


def test_a_symlink_at_the_path_is_refused(tmp_path):
    n, fport, dump, secret = dumped_nginx(tmp_path)
    os.symlink(secret, dump)
    start_bounded(n)
    raw_request(fport, req('/'))
    n.stop()
    assert secret.read_bytes() == SECRET
    assert os.path.islink(dump)
    assert 'is not a regular file' in n.error_log


def test_a_fifo_at_the_path_neither_blocks_nor_is_written(tmp_path):
    n, fport, dump, secret = dumped_nginx(tmp_path)
    os.mkfifo(dump, 0o666)
    start_bounded(n)
    assert 'is not a regular file' in n.error_log
    raw_request(fport, req('/'))
    pid = n.master_pid()
    r = n.run('-s', 'quit', timeout=10)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: process_gone(pid), timeout=15, what='master exit')
    assert stat.S_ISFIFO(os.lstat(dump).st_mode)
    assert not [f for f in os.listdir(dump.parent) if f.endswith('.tmp') and
                not os.path.islink(dump.parent / f)], 'a temporary file was left behind'
