"""The VEX (release/vex.json): every CVE that the pinned nginx release fixes
(its changelog, docs/xml/nginx/changes.xml of the unpacked tree, up to the
pinned version) is listed as resolved, the CVEs of Debian's newest 1.22.1
backport are listed, every entry names a locked component and a valid state,
it becomes the SBOM's CycloneDX 1.5 `vulnerabilities` (validated in
test_sbom.py), and SECURITY.md carries the same rows.  The pinned version is
read from build/deps.lock."""
import gzip
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from relutil import RELEASE

sys.path.insert(0, str(RELEASE))
import vex  # noqa: E402
from support.lock import locked_versions

CVE = re.compile(r'CVE-\d{4}-\d{4,}')


def sh_common(script, apt=False):
    setup = '. "$1/build/common.sh"; ' + ('. "$1/build/apt.sh"; ' if apt else '')
    r = subprocess.run(['bash', '-c', setup + script, '_', str(ROOT)],
                       capture_output=True, text=True, timeout=300)
    return r.stdout.strip() if r.returncode == 0 else None


def version_key(version):
    return tuple(int(n) for n in version.split('.'))


def cves_fixed_by(changes_xml, pinned):
    """{CVE: nginx version} of every CVE named in changes.xml's entries for
    versions up to and including PINNED (a stable branch's changelog holds
    its own releases and the mainline history before them)."""
    fixed = {}
    for block in re.split(r'(?=<changes ver=")', changes_xml)[1:]:
        ver = re.match(r'<changes ver="([\d.]+)"', block).group(1)
        if version_key(ver) <= version_key(pinned):
            for cve in CVE.findall(block):
                fixed.setdefault(cve, ver)
    return fixed


def cves_of_1_22_1(changelog):
    """CVE ids named in the Debian changelog entries of nginx 1.22.1-*."""
    blocks = re.split(r'^(?=nginx \()', changelog, flags=re.M)
    return {c for b in blocks if b.startswith('nginx (1.22.1') for c in CVE.findall(b)}


def vex_entries(component=None):
    return {v['id']: v for v in vex.load() if component in (None, v['component'])}


@pytest.fixture(scope='module')
def nginx_fixes():
    src = sh_common('np_srcdir nginx')
    changes = src and (ROOT / src / 'docs' / 'xml' / 'nginx' / 'changes.xml')
    if not changes or not changes.is_file():
        pytest.skip('nginx sources not unpacked (build/fetch.sh)')
    return cves_fixed_by(changes.read_text(), locked_versions()['nginx'])


def test_every_cve_the_pinned_nginx_fixes_is_resolved(nginx_fixes):
    pinned = locked_versions()['nginx']
    assert len(nginx_fixes) > 40
    # the newest entries belong to the pinned release itself
    assert pinned in nginx_fixes.values(), 'changes.xml has no CVE for %s: another tree?' % pinned
    entries = vex_entries('nginx')
    missing = sorted(set(nginx_fixes) - set(entries))
    assert not missing, missing
    wrong = {c: entries[c]['state'] for c in nginx_fixes if entries[c]['state'] != 'resolved'}
    assert not wrong, wrong


def test_nginx_cves_the_pinned_release_does_not_fix_are_not_called_fixed(nginx_fixes):
    """A later release's fix is not in the pinned tree: such an entry must not
    claim a fix by changes.xml (a resolved entry outside it says why)."""
    for cve, v in vex_entries('nginx').items():
        if cve not in nginx_fixes and v['state'] == 'resolved':
            assert 'changes.xml names no CVE' in v['detail'], v


def newest_debian_backport():
    """The newest nginx-common 1.22.1-* apt knows, or None (offline): Debian
    keeps backporting upstream's fixes to 1.22.1, fixes released after the
    pinned nginx among them, and its changelog comes with nginx-common."""
    out = sh_common('np_apt_ready >/dev/null 2>&1 && np_apt apt-cache madison nginx-common', apt=True)
    versions = re.findall(r'^\s*nginx-common \| (1\.22\.1-\S+) \|', out or '', re.M)
    if not versions:
        return None
    return max(versions, key=lambda v: [int(n) for n in re.findall(r'\d+', v)])


def test_every_cve_of_the_newest_debian_backport_has_a_vex_entry(tmp_path):
    if not shutil.which('apt-get'):
        pytest.skip('no apt')
    version = newest_debian_backport()
    if version is None:
        pytest.skip('the archive is not reachable (offline)')
    out = sh_common('cd "%s" && np_apt apt-get download nginx-common=%s' % (tmp_path, version), apt=True)
    debs = list(tmp_path.glob('nginx-common_*.deb'))
    if out is None or not debs:
        pytest.skip('nginx-common=%s does not download' % version)
    subprocess.run(['dpkg-deb', '-x', str(debs[0]), str(tmp_path / 'x')], check=True)
    text = gzip.decompress((tmp_path / 'x/usr/share/doc/nginx-common/changelog.Debian.gz').read_bytes()).decode()
    named = cves_of_1_22_1(text)
    assert {'CVE-2026-42533', 'CVE-2026-125283', 'CVE-2023-44487'} <= named
    missing = named - set(vex_entries())
    assert not missing, (version, sorted(missing))


def test_vex_names_locked_components_and_valid_states():
    comps = locked_versions()
    for v in vex.load():
        assert v['component'] in comps, v
        assert v['state'] in vex.STATES, v
        assert v['detail'].strip(), v
        if not vex.ADVISORY_ID.fullmatch(v['id']):
            # an upstream fix without an advisory: COMPONENT@COMMIT, with the commit's URL
            name, commit = v['id'].split('@')
            assert name == v['component'] and v['url'].endswith('/commit/' + commit), v
    states = {v['state'] for v in vex.load()}
    assert {'resolved', 'resolved_with_pedigree', 'not_affected', 'exploitable'} <= states


def test_security_md_carries_exactly_the_vex_rows():
    text = (ROOT / 'SECURITY.md').read_text()
    rows = [l for l in text.splitlines() if re.match(r'\| (CVE-|GHSA-|\S+@[0-9a-f]{7,40} \|)', l)]
    assert rows == vex.markdown_rows()
    for section in ('## Reporting a vulnerability', 'ssi', 'slice', 'http_v3', 'stream_ssl_preread'):
        assert section in text
