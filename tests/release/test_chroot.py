"""Portability proof: the bundle runs in a chroot holding only its own files plus
/etc/passwd, /etc/group, /etc/hosts, /etc/nsswitch.conf and a CA bundle, with no
shared library (no libc.so, no ld.so) anywhere in it."""
import os
import pathlib
import shutil
import subprocess

import pytest

from relutil import NOBODY, ChrootNginx, check_default_config, elf_kind, has_interp, proc_ids, \
    children
from support.bundle import BUNDLE, IS_ASAN, copy_bundle
from support.namespaces import NetNS

pytestmark = pytest.mark.skipif(IS_ASAN, reason='the ASan build is dynamically linked')

PREFIX = '/opt/nginx-portable'
HAS_HC = (BUNDLE / 'lualib' / 'resty' / 'upstream' / 'healthcheck.lua').is_file()
CA = pathlib.Path('/etc/ssl/certs/ca-certificates.crt')


@pytest.fixture
def rootfs(tmp_path):
    root = tmp_path / 'root'
    b = copy_bundle(root / PREFIX.lstrip('/'))
    for d in ('logs', 'temp'):
        os.chown(b / d, NOBODY, NOBODY)
    etc = root / 'etc'
    (etc / 'ssl' / 'certs').mkdir(parents=True)
    (etc / 'passwd').write_text('root:x:0:0:root:/root:/bin/false\n'
                                'nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n')
    (etc / 'group').write_text('root:x:0:\nnogroup:x:65534:\n')
    (etc / 'hosts').write_text('127.0.0.1 localhost\n::1 localhost\n')
    (etc / 'nsswitch.conf').write_text('passwd: files\ngroup: files\nhosts: files dns\n')
    if CA.is_file():
        shutil.copy(CA, etc / 'ssl' / 'certs' / 'ca-certificates.crt')
    else:
        (etc / 'ssl' / 'certs' / 'ca-certificates.crt').write_text('')
    for p in [root] + [q for q in root.rglob('*') if q.is_dir()]:
        os.chmod(p, 0o755)
    return root


def test_chroot_holds_no_shared_libraries(rootfs):
    everything = sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob('*') if not p.is_dir())
    outside = [p for p in everything if not p.startswith(PREFIX.lstrip('/') + '/')]
    assert outside == ['etc/group', 'etc/hosts', 'etc/nsswitch.conf', 'etc/passwd',
                       'etc/ssl/certs/ca-certificates.crt'], outside
    elves = [p for p in rootfs.rglob('*') if p.is_file() and elf_kind(p)]
    assert elves == [rootfs / PREFIX.lstrip('/') / 'sbin' / 'nginx'], elves
    assert not has_interp(elves[0])
    assert not any('.so' in p.rsplit('/', 1)[-1] for p in everything)


def test_config_test_as_root_resolves_user_from_etc_passwd(rootfs):
    """As root, nginx looks up its default user `nobody` (getpwnam): the static
    glibc reads the chroot's /etc/passwd with no NSS module."""
    r = subprocess.run(['chroot', str(rootfs), PREFIX + '/sbin/nginx', '-p', PREFIX + '/', '-t'],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert 'test is successful' in r.stderr
    (rootfs / 'etc' / 'passwd').write_text('root:x:0:0:root:/root:/bin/false\n')
    r = subprocess.run(['chroot', str(rootfs), PREFIX + '/sbin/nginx', '-p', PREFIX + '/', '-t'],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and 'getpwnam("nobody") failed' in r.stderr, r.stderr


def test_runs_unprivileged_in_minimal_chroot(rootfs):
    ns = NetNS()
    n = None
    try:
        n = ChrootNginx(ns, rootfs, [PREFIX + '/sbin/nginx', '-p', PREFIX + '/', '-g', 'daemon off;'],
                        NOBODY, NOBODY, PREFIX)
        n.wait_ready(8080)
        assert proc_ids(n.proc.pid) == (NOBODY, NOBODY)
        assert all(proc_ids(w) == (NOBODY, NOBODY) for w in children(n.proc.pid))
        skipped = check_default_config(ns, HAS_HC)
        # the process sees the chroot as its root
        assert os.readlink('/proc/%d/root' % n.proc.pid) == str(rootfs)
        assert n.stop() == 0
        assert n.crash_report() is None, n.error_log[-3000:]
        assert '[emerg]' not in n.error_log, n.error_log[-3000:]
    finally:
        if n:
            n.stop()
        ns.close()
    if skipped:
        pytest.skip(skipped)
