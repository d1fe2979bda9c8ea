"""Shared by build/check-updates and build/bump: the lock file as data, and
the archive as apt sees it through build/apt.sh's private configuration.

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
    """[{name, version, license, kind, package, debver, files: [(name, sha)], upstream, first, last}]:
    first/last are the component's line numbers (0-based, last exclusive)."""
    lines = (LOCK.read_text() if text is None else text).splitlines()
    comps = []
    for i, raw in enumerate(lines):
        f = raw.split()
        if not f or f[0].startswith('#'):
            continue
        if f[0] == 'component':
            comps.append({'name': f[1], 'version': f[2], 'license': f[3], 'kind': None, 'files': [],
                          'upstream': None, 'first': i, 'last': i + 1})
        elif comps and f[0] in ('debian', 'file', 'upstream'):
            c = comps[-1]
            c['last'] = i + 1
            if f[0] == 'debian':
                c['kind'], c['package'], c['debver'] = f[1], f[2], f[3]
            elif f[0] == 'file':
                c['files'].append((f[1], f[2]))
            else:
                c['upstream'] = (f[1], f[2])
    return comps


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
