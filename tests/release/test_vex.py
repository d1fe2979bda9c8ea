"""The VEX (release/vex.json): it covers every CVE of Debian's nginx changelog
for 1.22.1, names only locked components, becomes the SBOM's CycloneDX 1.5
`vulnerabilities` (validated in test_sbom.py), and SECURITY.md carries the
same rows."""
import gzip
import json
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from relutil import RELEASE

sys.path.insert(0, str(RELEASE))
import vex  # noqa: E402

CVE = re.compile(r'CVE-\d{4}-\d{4,}')
# nginx's revisions past the pinned one: their changelog comes from nginx-common.
NGINX_COMMON = 'nginx-common=1.22.1-9+deb12u11'


def sh_common(script):
    r = subprocess.run(['bash', '-c', '. "$1/build/common.sh"; . "$1/build/apt.sh"; ' + script, '_', str(ROOT)],
                       capture_output=True, text=True, timeout=300)
    return r.stdout.strip() if r.returncode == 0 else None


def cves_of_1_22_1(changelog):
    """CVE ids named in the changelog entries of nginx 1.22.1-* (older entries are history)."""
    blocks = re.split(r'^(?=nginx \()', changelog, flags=re.M)
    return {c for b in blocks if b.startswith('nginx (1.22.1') for c in CVE.findall(b)}


def vex_ids(component=None):
    return {v['id'] for v in vex.load() if component in (None, v['component'])}


def test_every_cve_of_the_pinned_nginx_changelog_has_a_vex_entry():
    src = sh_common('np_srcdir nginx')
    changelog = src and (ROOT / src / 'debian' / 'changelog')
    if not changelog or not changelog.is_file():
        pytest.skip('nginx sources not unpacked (run build/build.sh)')
    named = cves_of_1_22_1(changelog.read_text())
    assert len(named) > 15
    missing = named - vex_ids()
    assert not missing, sorted(missing)


def test_every_cve_of_deb12u11_has_a_vex_entry(tmp_path):
    """Debian's deb12u10/u11 fixes (sources 404) are listed, from nginx-common's changelog."""
    if not shutil.which('apt-get'):
        pytest.skip('no apt')
    out = sh_common('np_apt_ready >/dev/null 2>&1 && cd "%s" && np_apt apt-get download %s && ls' % (tmp_path, NGINX_COMMON))
    debs = list(tmp_path.glob('nginx-common_*.deb'))
    if out is None or not debs:
        pytest.skip('the archive is not reachable (offline) or no longer serves ' + NGINX_COMMON)
    subprocess.run(['dpkg-deb', '-x', str(debs[0]), str(tmp_path / 'x')], check=True)
    text = gzip.decompress((tmp_path / 'x/usr/share/doc/nginx-common/changelog.Debian.gz').read_bytes()).decode()
    named = cves_of_1_22_1(text)
    assert {'CVE-2026-42533', 'CVE-2026-125283', 'CVE-2023-44487'} <= named
    missing = named - vex_ids()
    assert not missing, sorted(missing)


def test_vex_names_locked_components_and_valid_states():
    lock = (ROOT / 'build' / 'deps.lock').read_text()
    comps = set(re.findall(r'^component\s+(\S+)', lock, re.M))
    for v in vex.load():
        assert v['component'] in comps, v
        assert v['detail'].strip(), v
    states = {v['state'] for v in vex.load()}
    assert {'resolved_with_pedigree', 'not_affected', 'exploitable'} <= states


def test_security_md_carries_exactly_the_vex_rows():
    text = (ROOT / 'SECURITY.md').read_text()
    rows = [l for l in text.splitlines() if re.match(r'\| (CVE|GHSA)-', l)]
    assert rows == vex.markdown_rows()
    for section in ('## Reporting a vulnerability', 'ssi', 'stream_ssl_preread'):
        assert section in text
