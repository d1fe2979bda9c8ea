"""Private namespaces for tests that need fixed ports or their own
/etc/hosts: NetNS (a network namespace with only loopback, used with
nsenter) and NamespacedNginx (nginx in a mount namespace whose /etc/hosts
is a file of the test's), and entered(): the calling thread itself moved
into a NetNS for a while, so sockets, threads and programs it starts (wrk,
curl, nginx) all live there and fixed ports never collide with anything
else on the machine.  link(): a veth cable between two NetNS, so one is a
remote host to the other (its packets come from a non-loopback address)."""
import contextlib
import ctypes
import os
import shutil
import subprocess
import threading

import pytest

from support.bundle import Nginx
from support.net import wait_for


class NetNS:
    """A network namespace with only `lo` (up), kept alive by a bounded sleep."""

    def __init__(self):
        self.holder = subprocess.Popen(
            ['unshare', '--net', 'sh', '-c', 'ip link set lo up && exec sleep 600'],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs = []
        wait_for(self._lo_up, timeout=10, what='loopback up in the new namespace')

    @property
    def path(self):
        return '/proc/%d/ns/net' % self.holder.pid

    def _lo_up(self):
        r = subprocess.run(['nsenter', '--net=' + self.path, 'ip', '-o', 'link', 'show', 'lo'],
                           capture_output=True, text=True)
        return r.returncode == 0 and 'UP' in r.stdout.split('>')[0]

    def popen(self, cmd, **kw):
        kw.setdefault('stdin', subprocess.DEVNULL)
        kw.setdefault('stdout', subprocess.PIPE)
        kw.setdefault('stderr', subprocess.STDOUT)
        p = subprocess.Popen(['nsenter', '--net=' + self.path, *cmd], **kw)
        self.procs.append(p)
        return p

    def run(self, cmd, timeout=30):
        return subprocess.run(['nsenter', '--net=' + self.path, *cmd], capture_output=True,
                              text=True, timeout=timeout)

    def http(self, url, timeout=5):
        """(status, body) of a GET inside the namespace; status 0 = no answer."""
        r = self.run(['curl', '-s', '-o', '-', '-w', '\n%{http_code}', '--max-time', str(timeout), url],
                     timeout=timeout + 5)
        body, _, code = r.stdout.rpartition('\n')
        try:
            return int(code), body.rstrip('\n')
        except ValueError:
            return 0, r.stdout

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        self.holder.kill()
        self.holder.wait(timeout=10)


def link(a, b, addr_a, addrs_b, prefix=24):
    """A veth pair between NetNS a and b, up: addr_a on a's end and
    addrs_b (one or more) on b's, all in one /prefix."""
    name = 'np%d' % b.holder.pid
    for cmd in (['ip', 'link', 'add', name + 'a', 'type', 'veth', 'peer', 'name', name + 'b'],
                ['ip', 'link', 'set', name + 'b', 'netns', str(b.holder.pid)],
                ['ip', 'addr', 'add', '%s/%d' % (addr_a, prefix), 'dev', name + 'a'],
                ['ip', 'link', 'set', name + 'a', 'up']):
        r = a.run(cmd)
        assert r.returncode == 0, (cmd, r.stderr)
    for cmd in [['ip', 'addr', 'add', '%s/%d' % (x, prefix), 'dev', name + 'b'] for x in addrs_b] + \
            [['ip', 'link', 'set', name + 'b', 'up']]:
        r = b.run(cmd)
        assert r.returncode == 0, (cmd, r.stderr)
    wait_for(lambda: 'LOWER_UP' in b.run(['ip', '-o', 'link', 'show', name + 'b']).stdout,
             timeout=10, what='the veth link up')


CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, 'setns(%s): %s' % (path, os.strerror(err)))
    finally:
        os.close(fd)


@contextlib.contextmanager
def entered(ns):
    """Run the with-block's thread inside ns (a NetNS); back home after.
    A network namespace belongs to the thread, and whatever the thread
    creates meanwhile (sockets, threads, child processes) stays in ns."""
    home = '/proc/self/task/%d/ns/net' % threading.get_native_id()
    back = os.open(home, os.O_RDONLY)
    try:
        _setns(ns.path)
        try:
            yield ns
        finally:
            if _libc.setns(back, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), 'could not return to the test\'s own namespace')
    finally:
        os.close(back)


def can_enter_network():
    return os.geteuid() == 0 and shutil.which('unshare') is not None


@pytest.fixture
def own_network():
    """The test runs in a network namespace of its own (loopback only), when
    the machine allows it (root, unshare): fixed ports such as the default
    config's 8080/18080 are then the test's alone.  Yields the NetNS, or None
    where the test stays on the machine's network."""
    if not can_enter_network():
        yield None
        return
    ns = NetNS()
    try:
        with entered(ns):
            yield ns
    finally:
        ns.close()


class NamespacedNginx(Nginx):
    """nginx started in a private mount namespace whose /etc/hosts is ours
    (bind-mounted; the real /etc/hosts is not touched).  The daemon stays in
    that namespace, so config-time name resolution sees our hosts file."""

    hosts_file = None

    def run(self, *args, check=False, timeout=30):
        cmd = ('mount --bind "$1" /etc/hosts && shift && exec "$@"')
        return subprocess.run(['unshare', '-m', 'sh', '-c', cmd, 'sh', str(self.hosts_file),
                               *self.command(*args)],
                              env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=check)


def can_namespace_hosts():
    if os.geteuid() != 0 or not shutil.which('unshare'):
        return False
    r = subprocess.run(['unshare', '-m', 'sh', '-c',
                        'mount --bind /etc/hostname /etc/hosts'],
                       capture_output=True, timeout=10)
    return r.returncode == 0
