"""Reproducibility: `release/release.sh` run twice on copies of this tree, in
different directories (different depths), at different times, with different
umask, time zone and locale, gives byte-identical sbin/nginx, tarball, OCI
image and SBOM.  Each run compiles nginx from scratch (about a minute or two);
the dependency cache (~/.cache/nginx-portable) is shared, as allowed.
"""
import hashlib
import os
import pathlib
import shutil
import tarfile
import time

import pytest

from conftest import IS_ASAN, ROOT
from relutil import run_script
from support.bundle import snapshot_tree as snapshot

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(IS_ASAN, reason='reproducibility is a property of the release build')]

VERSION = (ROOT / 'VERSION').read_text().strip()
BASE = 'nginx-portable-%s-linux-x86_64' % VERSION


def sha(p):
    return hashlib.sha256(pathlib.Path(p).read_bytes()).hexdigest()


def release(tree, umask, extra_env):
    env = dict(os.environ, **extra_env)
    env.pop('NP_BUILD_DIR', None)
    env.pop('NP_BUNDLE_OUT', None)
    env.pop('NP_VARIANT', None)
    env.pop('NP_MODULES', None)
    env.pop('NP_ARCH', None)
    # x86_64 only: the aarch64 build's reproducibility is the arm64 tier's
    # (tests/arm64/test_reproducible.py), and two more cross builds here would
    # double this test's time.
    env.setdefault('NP_RELEASE_ARCHES', 'x86_64')
    old = os.umask(umask)
    try:
        started = time.monotonic()
        r = run_script(['bash', 'release/release.sh'], cwd=tree, env=env, timeout=900)
    finally:
        os.umask(old)
    dist = tree / 'dist'
    out = {name: sha(dist / name) for name in
           (BASE + '.tar.gz', BASE + '.oci.tar', BASE + '.cdx.json', 'SHA256SUMS')}
    out['sbin/nginx'] = sha(dist / 'nginx-portable' / 'sbin' / 'nginx')
    return out, time.monotonic() - started, r.stderr


@pytest.fixture(scope='module')
def two_builds(tmp_path_factory):
    base = tmp_path_factory.mktemp('repro')
    src = snapshot(base / 'snapshot')
    a = base / 'a'
    b = base / 'somewhere' / 'much' / 'deeper' / 'b'
    shutil.copytree(src, a, symlinks=True)
    shutil.copytree(src, b, symlinks=True)
    ra = release(a, 0o022, {'TZ': 'UTC', 'LC_ALL': 'C.UTF-8'})
    rb = release(b, 0o027, {'TZ': 'Pacific/Kiritimati', 'LC_ALL': 'C'})
    return a, b, ra, rb


def test_two_builds_are_byte_identical(two_builds):
    a, b, (ha, ta, _), (hb, tb, _) = two_builds
    assert ha == hb, '\n'.join('%-40s %s %s' % (k, ha[k], hb.get(k)) for k in ha)
    # the sums file really describes the artifacts
    run_script(['sha256sum', '--check', '--strict', 'SHA256SUMS'], cwd=b / 'dist')
    sizes = {p.name: p.stat().st_size for p in (b / 'dist').iterdir() if p.is_file()}
    sizes['sbin/nginx'] = (b / 'dist' / 'nginx-portable' / 'sbin' / 'nginx').stat().st_size
    print('\nrelease build times: %.0f s, %.0f s' % (ta, tb))
    for k in sorted(sizes):
        print('%12d  %s' % (sizes[k], k))


def test_tarball_members_are_normalised(two_builds):
    _, b, _, _ = two_builds
    with tarfile.open(b / 'dist' / (BASE + '.tar.gz')) as t:
        members = t.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names, key=lambda n: n.rstrip('/').split('/'))     # --sort=name, per directory
    epoch = int(next(l.split()[1] for l in (ROOT / 'build' / 'deps.lock').read_text().splitlines()
                     if l.startswith('source-date-epoch')))
    for m in members:
        assert (m.uid, m.gid, m.mtime) == (0, 0, epoch), m.name
        # umask 027 in this build: modes normalised anyway
        assert m.mode & 0o755 == (0o755 if m.isdir() or m.mode & 0o100 else 0o644), (m.name, oct(m.mode))
    assert 'nginx-portable/sbin/nginx' in names


def test_binary_names_no_build_path(two_builds):
    a, b, _, _ = two_builds
    data = (b / 'dist' / 'nginx-portable' / 'sbin' / 'nginx').read_bytes()
    for p in (str(a), str(b)):
        assert p.encode() not in data, p


def test_dependencies_name_no_build_path(two_builds):
    # deps are compiled in a fixed /tmp directory: OpenSSL's recorded flags
    # and __FILE__ strings name neither the cache nor the home directory
    _, b, _, _ = two_builds
    data = (b / 'dist' / 'nginx-portable' / 'sbin' / 'nginx').read_bytes()
    cache = os.environ.get('NGINX_PORTABLE_CACHE') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'nginx-portable')
    for p in (cache, os.path.expanduser('~/')):
        assert p.encode() not in data, p
    assert b'-ffile-prefix-map=' not in data
