"""A bump rebuilds only what changed (issue 24): each dependency's build is
keyed by its own lock lines and recipe, each unpacked source by its own lock
lines.  A new nginx (or Lua module) tag leaves every C dependency's key, and
so its cached build, alone on both architectures; a new OpenSSL changes only
OpenSSL's key (and the joined tree nginx compiles against)."""
import re
import subprocess

import pytest

from support.bundle import ROOT

LOCK = (ROOT / 'build' / 'deps.lock').read_text()
DEPS = ('zlib', 'pcre2', 'openssl', 'luajit2')


def keys(lock_path, arch):
    """{'dep:NAME': key, 'src:NAME': key, 'deps': joined dir} under another lock."""
    script = ('. "$1/build/common.sh"; for d in %s; do echo "dep:$d $(np_dep_key $d)"; done; '
              'for c in $(np_components); do echo "src:$c $(np_comp_key $c)"; done; '
              'echo "deps $(basename "$(np_depsdir)")"' % ' '.join(DEPS))
    r = subprocess.run(['bash', '-c', script, '_', str(ROOT)], capture_output=True, text=True,
                       env={'PATH': '/usr/bin:/bin', 'HOME': '/root', 'NP_LOCK_FILE': str(lock_path),
                            'NP_ARCH': arch})
    assert r.returncode == 0, r.stderr
    return dict(line.split() for line in r.stdout.splitlines())


def bumped(tmp_path, component, new_version):
    """The lock with COMPONENT's version and its pinned file's hash changed."""
    lines, cur = [], None
    for line in LOCK.splitlines():
        f = line.split()
        if f and f[0] == 'component':
            cur = f[1]
            if cur == component:
                line = line.replace(f[2], new_version)
        elif f and f[0] == 'file' and cur == component:
            line = '%s %s' % (line.rsplit(' ', 1)[0], '0' * 64)
        lines.append(line)
    p = tmp_path / ('%s.lock' % component)
    p.write_text('\n'.join(lines) + '\n')
    assert p.read_text() != LOCK
    return p


@pytest.mark.parametrize('arch', ['x86_64', 'aarch64'])
@pytest.mark.parametrize('component', ['nginx', 'lua-nginx-module', 'lua-resty-core'])
def test_a_bump_of_nginx_or_a_lua_module_keeps_every_dependency_cached(tmp_path, arch, component):
    before = keys(ROOT / 'build' / 'deps.lock', arch)
    after = keys(bumped(tmp_path, component, '9.9.9'), arch)
    for d in DEPS:
        assert after['dep:' + d] == before['dep:' + d], d
    assert after['deps'] == before['deps']
    assert after['src:' + component] != before['src:' + component]
    others = [k for k in before if k.startswith('src:') and k != 'src:' + component]
    assert others and all(after[k] == before[k] for k in others)


@pytest.mark.parametrize('arch', ['x86_64', 'aarch64'])
def test_a_bump_of_openssl_rebuilds_only_openssl(tmp_path, arch):
    before = keys(ROOT / 'build' / 'deps.lock', arch)
    after = keys(bumped(tmp_path, 'openssl', '9.9.9'), arch)
    assert after['dep:openssl'] != before['dep:openssl']
    for d in ('zlib', 'pcre2', 'luajit2'):
        assert after['dep:' + d] == before['dep:' + d], d
    assert after['deps'] != before['deps']


def test_the_architectures_have_their_own_keys():
    x86, arm = keys(ROOT / 'build' / 'deps.lock', 'x86_64'), keys(ROOT / 'build' / 'deps.lock', 'aarch64')
    assert all(x86['dep:' + d] != arm['dep:' + d] for d in DEPS)
    assert re.fullmatch(r'deps-x86_64-[0-9a-f]{16}', x86['deps'])
    assert x86['src:nginx'] == arm['src:nginx']          # one unpacked source for both
