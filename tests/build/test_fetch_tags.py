"""build/fetch.sh and the lock's git kind: a tag's tarball comes from the
download cache, else the local source mirror (NP_SOURCES), verified by its
SHA-256 and by the git tree id of what it unpacks to; a file that is not the
pinned one, or a tree that is not the pinned one, stops the build with a
message that says what to do.  Runs against a private cache, offline."""
import os
import pathlib
import shutil
import subprocess

import pytest

from support.bundle import ROOT

COMPONENT = 'lua-resty-core'          # the smallest tag in the lock


def lock_lines(component):
    out, cur = [], None
    for line in (ROOT / 'build' / 'deps.lock').read_text().splitlines():
        f = line.split()
        if f and f[0] == 'component':
            cur = f[1]
        if cur == component and f and f[0] in ('git', 'file'):
            out.append(f)
    return {f[0]: f[1:] for f in out}


def mirror_file():
    """A copy of the pinned tarball: the source mirror beside the checkout, or the download cache."""
    name = lock_lines(COMPONENT)['file'][0]
    cache = pathlib.Path(os.environ.get('NGINX_PORTABLE_CACHE')
                         or pathlib.Path.home() / '.cache' / 'nginx-portable')
    for d in (os.environ.get('NP_SOURCES'), ROOT.parent / 'shared' / 'sources', cache / 'downloads'):
        if d and (pathlib.Path(d) / name).is_file():
            return pathlib.Path(d) / name
    pytest.skip('no copy of %s in a source mirror or the download cache' % name)


def fetch(tmp_path, sources, lock=None):
    env = dict(os.environ, NGINX_PORTABLE_CACHE=str(tmp_path / 'cache'), NP_SOURCES=str(sources))
    if lock:
        env['NP_LOCK_FILE'] = str(lock)
    return subprocess.run(['bash', str(ROOT / 'build' / 'fetch.sh'), COMPONENT], capture_output=True,
                          text=True, env=env, timeout=300)


def test_a_tag_comes_from_the_mirror_and_its_tree_is_verified(tmp_path):
    src = mirror_file()
    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    shutil.copy(src, mirror / src.name)
    r = fetch(tmp_path, mirror)
    assert r.returncode == 0, r.stderr
    assert 'from the source mirror' in r.stderr
    assert (tmp_path / 'cache' / 'downloads' / src.name).is_file()
    unpacked = list((tmp_path / 'cache' / 'src').glob(COMPONENT + '-*'))
    assert len(unpacked) == 1 and (unpacked[0] / 'lib' / 'resty' / 'core.lua').is_file()


def test_a_mirror_file_with_other_bytes_is_refused(tmp_path):
    src = mirror_file()
    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    (mirror / src.name).write_bytes(src.read_bytes() + b'\0')
    r = fetch(tmp_path, mirror)
    assert r.returncode != 0
    assert 'does not match its pinned SHA-256 in build/deps.lock' in r.stderr, r.stderr


def test_another_tree_than_the_pinned_one_is_refused(tmp_path):
    src = mirror_file()
    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    shutil.copy(src, mirror / src.name)
    tree = lock_lines(COMPONENT)['git'][3]
    lock = tmp_path / 'deps.lock'
    lock.write_text((ROOT / 'build' / 'deps.lock').read_text().replace(tree, '0' * 40))
    r = fetch(tmp_path, mirror, lock)
    assert r.returncode != 0
    assert 'unpacks to another tree than %s' % ('0' * 40) in r.stderr, r.stderr


def test_no_copy_anywhere_says_where_to_put_one(tmp_path):
    if shutil.which('curl') is None:
        pytest.skip('curl missing')
    empty = tmp_path / 'empty'
    empty.mkdir()
    env_net = subprocess.run(['curl', '-sI', '--max-time', '5', 'https://github.com'], capture_output=True)
    if env_net.returncode == 0:
        pytest.skip('the forge is reachable here: the tag would download')
    r = fetch(tmp_path, empty)
    assert r.returncode != 0
    name = lock_lines(COMPONENT)['file'][0]
    assert 'is in neither the download cache' in r.stderr and name in r.stderr, r.stderr
    assert 'NP_SOURCES=%s' % empty in r.stderr
