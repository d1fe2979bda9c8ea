"""Shared by build/check-updates and build/bump: the lock file as data, the
archive as apt sees it through build/apt.sh's private configuration, and the
local source mirror of upstream tag tarballs (git components).

Nothing here trusts a listing: a version "downloads" only when every file of
it answers (probe() asks the archive for each file, headers only)."""
import os
import pathlib
import re
import subprocess
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
# NP_CHECK_LOCK: another lock file to check (tests); the build reads only build/deps.lock.
LOCK = pathlib.Path(os.environ.get('NP_CHECK_LOCK') or ROOT / 'build' / 'deps.lock')


class Offline(Exception):
    """The archive (or apt's lists of it) cannot be reached."""


def parse(text=None):
    """[{name, version, license, kind, files: [(name, sha)], upstream, first, last, kinds}]:
    a `debian` line adds package and debver (kind source|orig|binary), a `git`
    line repo, tag, commit and tree (kind 'git').  kinds lists every kind line
    seen, so a component with two (a lock edited by hand) can be reported.
    first/last are the component's line numbers (0-based, last exclusive)."""
    lines = (LOCK.read_text() if text is None else text).splitlines()
    comps = []
    for i, raw in enumerate(lines):
        f = raw.split()
        if not f or f[0].startswith('#'):
            continue
        if f[0] == 'component':
            comps.append({'name': f[1], 'version': f[2], 'license': f[3], 'kind': None, 'kinds': [],
                          'files': [], 'upstream': None, 'first': i, 'last': i + 1})
        elif comps and f[0] in ('debian', 'git', 'file', 'upstream'):
            c = comps[-1]
            c['last'] = i + 1
            if f[0] == 'debian':
                c['kind'], c['package'], c['debver'] = f[1], f[2], f[3]
                c['kinds'].append(f[1])
            elif f[0] == 'git':
                c['kind'] = 'git'
                c['kinds'].append('git')
                c['repo'], c['tag'], c['commit'], c['tree'] = (f[1:] + [''] * 4)[:4]
            elif f[0] == 'file':
                c['files'].append((f[1], f[2]))
            else:
                c['upstream'] = (f[1], f[2])
    return comps


def common(script, *args, timeout=60):
    """Run SCRIPT after sourcing common.sh only (no apt: works offline); returns stdout."""
    r = subprocess.run(['bash', '-c', '. "$0/build/common.sh"; ' + script, str(ROOT), *args],
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip()[-500:] or 'exit %d' % r.returncode)
    return r.stdout


def downloads_dir():
    """The download cache fetch.sh reads first (NP_DOWNLOADS)."""
    return pathlib.Path(common('echo "$NP_DOWNLOADS"').strip())


def sources_dir():
    """The local source mirror fetch.sh reads second (np_sources_dir: NP_SOURCES,
    else ../shared/sources beside the checkout), or None."""
    out = common('np_sources_dir').strip()
    return pathlib.Path(out) if out and pathlib.Path(out).is_dir() else None


def bash(script, *args, timeout=600):
    """Run SCRIPT after sourcing common.sh and apt.sh; returns stdout (raises Offline on failure)."""
    r = subprocess.run(['bash', '-c', '. "$0/build/common.sh"; . "$0/build/apt.sh"; ' + script,
                        str(ROOT), *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise Offline(r.stderr.strip()[-500:] or 'exit %d' % r.returncode)
    return r.stdout


def apt_ready():
    bash('np_apt_ready >&2')


def source_versions(package):
    """Every version of a source package apt's private lists know."""
    out = bash('np_apt apt-cache showsrc "$1" 2>/dev/null || true', package)
    return sorted({m.group(1) for m in re.finditer(r'^Version: (\S+)', out, re.M)}, key=VersionKey)


def source_files(package, version):
    """[(uri, name, size, sha256)] of package=version, or [] when apt does not know it."""
    out = bash('np_apt_uris "$1=$2" || true', package, version)
    return [tuple(l.split()) for l in out.splitlines() if len(l.split()) == 4]


def probe(uri, timeout=30):
    """True when the archive serves URI (a HEAD request; nothing is downloaded)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(uri, method='HEAD'), timeout=timeout) as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return False
    except OSError as e:
        raise Offline('%s: %s' % (uri, e))


def availability(package, version):
    """('complete'|'orig-only'|'nothing', files, missing names)."""
    files = source_files(package, version)
    missing = [name for uri, name, size, sha in files if not probe(uri)]
    origs = [f for f in files if '.orig.' in f[1] and not f[1].endswith('.asc')]
    if files and not missing:
        return 'complete', files, missing
    if origs and not any(o[1] in missing for o in origs):
        return 'orig-only', files, missing
    return 'nothing', files, missing


def compare(a, b):
    """dpkg's version order: -1, 0, 1."""
    if a == b:
        return 0
    lt = subprocess.run(['dpkg', '--compare-versions', a, 'lt', b]).returncode == 0
    return -1 if lt else 1


class VersionKey:
    def __init__(self, v):
        self.v = v

    def __lt__(self, other):
        return compare(self.v, other.v) < 0


def upstream_version(debver, component):
    """The upstream version a Debian version packs: epoch and revision dropped,
    repack markers (dfsg, really) and packaging spellings undone."""
    v = debver.split(':', 1)[-1].rsplit('-', 1)[0]
    v = v.split('really', 1)[-1]
    v = re.sub(r'[.+~]dfsg\d*', '', v)
    m = re.fullmatch(r'(\d+\.\d+)\.\d+\+openresty(\d{8})', v)
    if m and component == 'luajit2':
        return '%s-%s' % (m.group(1), m.group(2))          # OpenResty's tag spelling
    return v


# Upstream versions of git components: 1.30.4, 0.10.30rc2, 2.1-20251030.  A
# pre-release (rc, beta, alpha) sorts before the release it leads to.
PRE_RELEASE = {'alpha': 0, 'a': 0, 'beta': 1, 'b': 1, 'pre': 2, 'rc': 2}
UPSTREAM_VERSION = re.compile(r'(\d+(?:[.-]\d+)*)(?:[.~-]?(alpha|beta|pre|rc|a|b)\.?(\d*))?')


def upstream_key(version):
    """A sort key for an upstream version, or None when it is not one."""
    m = UPSTREAM_VERSION.fullmatch(version)
    if not m:
        return None
    numbers = tuple(int(n) for n in re.split(r'[.-]', m.group(1)))
    if m.group(2) is None:
        return numbers, 3, 0                     # the release itself: after its pre-releases
    return numbers, PRE_RELEASE[m.group(2)], int(m.group(3) or 0)


def mirror_versions(c, directory):
    """[(version, file name)] of the files in DIRECTORY named like the git
    component's pinned file with another version in place of its own, newest
    first.  [] when the pinned file name does not contain the version."""
    if len(c['files']) != 1 or c['version'] not in c['files'][0][0]:
        return []
    prefix, suffix = c['files'][0][0].split(c['version'], 1)
    pattern = re.compile(re.escape(prefix) + r'(\d[\w.~-]*?)' + re.escape(suffix))
    found = []
    for p in directory.iterdir():
        m = pattern.fullmatch(p.name)
        if m and p.is_file() and upstream_key(m.group(1)) is not None:
            found.append((m.group(1), p.name))
    return sorted(found, key=lambda vf: upstream_key(vf[0]), reverse=True)


def newer_in_mirror(c, directory):
    """[(version, file name)] of the mirror's versions newer than the pinned one."""
    pinned = upstream_key(c['version'])
    if pinned is None:
        return []
    return [(v, f) for v, f in mirror_versions(c, directory) if upstream_key(v) > pinned]
