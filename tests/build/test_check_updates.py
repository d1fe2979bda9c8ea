"""build/check-updates and build/bump against the lock: nothing wrong with the
pinned set (offline: the lock's own consistency and the cached downloads;
online: every pinned Debian file is still served with the pinned SHA-256), a
broken lock is reported, the local source mirror's newer tarballs of a git
component are listed, and bump pins a tag only when its tarball's tree id
matches.  Only the online part needs the network (it skips when the archive is
not reachable); every version used here is read from the lock."""
import hashlib
import os
import re
import subprocess
import tarfile

import pytest

from conftest import ROOT

CHECK = ROOT / 'build' / 'check-updates'
BUMP = ROOT / 'build' / 'bump'
LOCK = ROOT / 'build' / 'deps.lock'


def run(*args, env=None, timeout=120, tool=CHECK):
    return subprocess.run([str(tool), *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def git_components(lock_text):
    """[(name, version, git fields, file name)] of the lock's git components."""
    out = []
    for block in re.split(r'^(?=component )', lock_text, flags=re.M)[1:]:
        git = re.search(r'^git\s+(.*)$', block, re.M)
        if git:
            name, version = block.split()[1:3]
            out.append((name, version, git.group(1).split(), re.search(r'^file\s+(\S+)', block, re.M).group(1)))
    return out


def sections(stdout):
    """{component: [its indented lines]} of check-updates' report."""
    out, cur = {}, None
    for line in stdout.splitlines():
        if line and not line[0].isspace() and ' pinned ' in line:
            cur = out.setdefault(line.split()[0], [])
        elif line.startswith('  ') and cur is not None:
            cur.append(line.strip())
    return out


def neighbours(version):
    """(newer, older) versions around an upstream version: the next patch
    release and its release candidate are newer; the previous patch release,
    and a release candidate of the pinned version itself (or, when the pin is a
    release candidate, the one before it) are older."""
    m = re.fullmatch(r'(\d+(?:\.\d+)+)(?:rc(\d+))?', version)
    assert m, 'not a dotted upstream version: ' + version
    nums = [int(n) for n in m.group(1).split('.')]
    nxt = '.'.join(map(str, nums[:-1] + [nums[-1] + 1]))
    newer, older = [nxt, nxt + 'rc1'], []
    if nums[-1] > 0:
        older.append('.'.join(map(str, nums[:-1] + [nums[-1] - 1])))
    if m.group(2) is None:
        older.append(version + 'rc1')
    else:
        newer.append(m.group(1))                        # the release after its rc
        if int(m.group(2)) > 1:
            older.append('%src%d' % (m.group(1), int(m.group(2)) - 1))
    return newer, older


def test_pinned_set_is_consistent_offline():
    r = run('--offline')
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith('0 problem(s) with the pinned set')


def test_a_broken_lock_is_reported(tmp_path):
    lock = LOCK.read_text()
    # a source package without its .dsc, and an orig-only input with a .debian.tar
    dsc = re.search(r'^debian\s+source\s+(\S+).*\n(?:(?!component ).*\n)*?(file\s+\S+\.dsc .*\n)', lock, re.M)
    orig = re.search(r'^debian\s+orig\s+(\S+) .*$', lock, re.M)
    assert dsc and orig, 'the lock has no "debian source" or no "debian orig" component left'
    source_comp = re.findall(r'^component\s+(\S+)', lock[:dsc.start()], re.M)[-1]
    orig_comp = re.findall(r'^component\s+(\S+)', lock[:orig.start()], re.M)[-1]
    broken = lock.replace(dsc.group(2), '#\n', 1).replace(
        orig.group(0), orig.group(0) + '\nfile      %s_0-1.debian.tar.xz %s' % (orig.group(1), '0' * 64), 1)
    assert broken != lock
    (tmp_path / 'deps.lock').write_text(broken)
    r = run('--offline', env={'NP_CHECK_LOCK': str(tmp_path / 'deps.lock')})
    assert r.returncode == 1, r.stdout
    assert '%s: a source package without its .dsc' % source_comp in r.stdout
    assert '%s: "debian orig" pins only orig tarballs' % orig_comp in r.stdout


def test_a_broken_git_entry_is_reported_offline(tmp_path):
    lock = LOCK.read_text()
    comps = git_components(lock)
    assert comps, 'the lock has no git component'
    name, version, (repo, tag, commit, tree), fname = comps[0]
    # a short commit id, and a second file line for one tag
    broken = lock.replace(' %s %s' % (commit, tree), ' %s %s' % (commit[:12], tree), 1)
    broken = re.sub(r'^(file\s+%s .*)$' % re.escape(fname), r'\1\nfile      extra.tar.gz ' + '0' * 64,
                    broken, count=1, flags=re.M)
    assert broken.count('\n') == lock.count('\n') + 1 and commit[:12] + ' ' in broken
    (tmp_path / 'deps.lock').write_text(broken)
    r = run('--offline', name, env={'NP_CHECK_LOCK': str(tmp_path / 'deps.lock')})
    assert r.returncode == 1, r.stdout
    assert '%s: the git commit %r is not 40 hex digits' % (name, commit[:12]) in r.stdout
    assert '%s: a git tag pins exactly one file (its tarball), not 2' % name in r.stdout


def test_a_cached_git_tarball_with_other_bytes_is_reported(tmp_path):
    name, version, git, fname = git_components(LOCK.read_text())[0]
    (tmp_path / 'downloads').mkdir()
    (tmp_path / 'downloads' / fname).write_bytes(b'not the pinned tarball')
    r = run('--offline', name, env={'NGINX_PORTABLE_CACHE': str(tmp_path)})
    assert r.returncode == 1, r.stdout
    assert '%s: the cached %s does not match its pinned SHA-256' % (name, fname) in r.stdout


def test_the_source_mirror_lists_newer_tags(tmp_path):
    comps = git_components(LOCK.read_text())
    expect = {}
    for name, version, git, fname in comps:
        newer, older = neighbours(version)
        for v in newer + older + [version]:
            (tmp_path / fname.replace(version, v, 1)).write_bytes(b'')
        expect[name] = newer, older
    (tmp_path / 'unrelated-9.9.9.tar.gz').write_bytes(b'')
    r = run('--offline', env={'NP_SOURCES': str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr
    report = sections(r.stdout)
    for name, (newer, older) in expect.items():
        listed = [l.split()[1] for l in report[name] if l.startswith('newer ')]
        assert sorted(listed) == sorted(newer), (name, report[name])
        assert not set(listed) & set(older)


def test_pinned_set_is_served_by_the_archive():
    r = run(timeout=1200)
    if r.returncode == 2:
        pytest.skip('archive not reachable: ' + r.stderr[-300:])
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'PROBLEM' not in r.stdout
    assert r.stdout.strip().endswith('0 problem(s) with the pinned set')
    # every component is reported with its pinned version
    for line in LOCK.read_text().splitlines():
        if line.startswith('component '):
            assert '\n' + line.split()[1] + ' ' in '\n' + r.stdout, line


def make_tag_tarball(tmp_path):
    """A small tarball in `git archive`'s layout (one top directory) and the
    git tree id of its content, computed by git itself in a scratch repo."""
    src = tmp_path / 'src' / 'demo-9.9.9'
    (src / 'lib').mkdir(parents=True)
    (src / 'README').write_text('demo\n')
    (src / 'lib' / 'run.sh').write_text('#!/bin/sh\n')
    (src / 'lib' / 'run.sh').chmod(0o755)
    env = dict(os.environ, GIT_DIR=str(tmp_path / 'g'), GIT_WORK_TREE=str(src))
    subprocess.run(['git', 'init', '-q'], env=env, check=True)
    subprocess.run(['git', 'add', '-A', '-f'], env=env, check=True)
    tree = subprocess.run(['git', 'write-tree'], env=env, check=True, capture_output=True,
                          text=True).stdout.strip()
    tarball = tmp_path / 'demo-9.9.9.tar.gz'
    with tarfile.open(tarball, 'w:gz') as t:
        t.add(src, 'demo-9.9.9')
    return tarball, tree


def test_bump_pins_a_tag_only_when_its_tree_matches(tmp_path):
    lock = LOCK.read_text()
    name, version, (repo, tag, commit, tree), fname = git_components(lock)[0]
    (tmp_path / 'deps.lock').write_text(lock)
    tarball, new_tree = make_tag_tarball(tmp_path)
    env = {'NP_CHECK_LOCK': str(tmp_path / 'deps.lock'), 'NGINX_PORTABLE_CACHE': str(tmp_path / 'cache')}
    args = [name, '--tag', 'v9.9.9', '--commit', 'a' * 40, '--file', str(tarball)]

    r = run(*args, '--tree', 'b' * 40, env=env, tool=BUMP)
    assert r.returncode != 0 and 'nothing changed' in r.stderr, r.stdout + r.stderr
    assert (tmp_path / 'deps.lock').read_text() == lock

    r = run(*args, '--tree', new_tree, env=env, tool=BUMP)
    assert r.returncode == 0, r.stdout + r.stderr
    sha = hashlib.sha256(tarball.read_bytes()).hexdigest()
    new = (tmp_path / 'deps.lock').read_text()
    assert 'git       %s v9.9.9 %s %s\n' % (repo, 'a' * 40, new_tree) in new
    assert 'file      demo-9.9.9.tar.gz %s\n' % sha in new
    assert re.search(r'^component %s 9\.9\.9 ' % re.escape(name), new, re.M)
    assert fname not in new and new.count('\n') == lock.count('\n')   # the old lines replaced, nothing else
    assert (tmp_path / 'cache' / 'downloads' / 'demo-9.9.9.tar.gz').read_bytes() == tarball.read_bytes()
    r = run('--offline', env=env)
    assert r.returncode == 0, r.stdout
