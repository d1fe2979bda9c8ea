"""`make release` gives both architectures' artifacts: a tarball (+ .sha256),
an OCI image and an SBOM per architecture, one OCI image index holding both
platforms, and SHA256SUMS over all of them.  And the aarch64 build is
reproducible: a second build from a copy of the tree elsewhere gives the same
bytes."""
import hashlib
import json
import os
import pathlib
import subprocess
import tarfile

import pytest

from armutil import VERSION, arm64_only, elf_machine
from support.bundle import ROOT, snapshot_tree

pytestmark = arm64_only
DIST = ROOT / 'dist'
ARCHES = ('x86_64', 'aarch64')
MULTI = DIST / ('nginx-portable-%s.oci.tar' % VERSION)


def base(arch):
    return 'nginx-portable-%s-linux-%s' % (VERSION, arch)


def sha(p):
    return hashlib.sha256(pathlib.Path(p).read_bytes()).hexdigest()


def run(args, timeout, **kw):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, 'command %s failed:\n%s\n%s' % (args, r.stdout[-3000:], r.stderr[-5000:])
    return r


@pytest.fixture(scope='module')
def release():
    env = {k: v for k, v in os.environ.items() if k not in ('NP_ARCH', 'NP_RELEASE_ARCHES')}
    return run(['bash', 'release/release.sh'], timeout=2400, cwd=ROOT, env=env)


def test_release_has_both_architectures_and_checksums(release, tmp_path):
    for arch in ARCHES:
        for ext in ('.tar.gz', '.tar.gz.sha256', '.oci.tar', '.cdx.json'):
            assert (DIST / (base(arch) + ext)).is_file(), base(arch) + ext
        run(['sha256sum', '--check', '--strict', base(arch) + '.tar.gz.sha256'], timeout=60, cwd=DIST)
        # one unpack instruction for both: the top directory is nginx-portable/
        with tarfile.open(DIST / (base(arch) + '.tar.gz')) as t:
            t.extract('nginx-portable/sbin/nginx', tmp_path / arch)
        assert elf_machine(tmp_path / arch / 'nginx-portable' / 'sbin' / 'nginx') == \
            {'x86_64': 'Advanced Micro Devices X86-64', 'aarch64': 'AArch64'}[arch]
    listed = run(['sha256sum', '--check', '--strict', 'SHA256SUMS'], timeout=60, cwd=DIST).stdout
    assert listed.count(': OK') == 7 and MULTI.name + ': OK' in listed, listed


def test_sbom_per_architecture_names_its_toolchain(release):
    for arch, glibc_pkg in (('x86_64', 'libc6-dev'), ('aarch64', 'libc6-dev-arm64-cross')):
        bom = json.loads((DIST / (base(arch) + '.cdx.json')).read_text())
        props = {p['name']: p['value'] for p in bom['metadata']['properties']}
        assert props['nginx-portable:architecture'] == arch
        assert props['nginx-portable:artifact:' + base(arch) + '.tar.gz'] == \
            'sha256:' + sha(DIST / (base(arch) + '.tar.gz'))
        comps = {c['bom-ref']: c for c in bom['components']}
        assert comps['glibc']['purl'].startswith('pkg:deb/debian/%s@' % glibc_pkg), comps['glibc']['purl']
        with tarfile.open(DIST / (base(arch) + '.tar.gz')) as t:
            binary = t.extractfile('nginx-portable/sbin/nginx').read()
        assert comps['file:sbin/nginx']['hashes'][0]['content'] == hashlib.sha256(binary).hexdigest()


def oci_blob(archive, digest):
    with tarfile.open(archive) as t:
        return json.loads(t.extractfile('blobs/sha256/' + digest.split(':', 1)[1]).read())


def test_one_image_index_holds_both_platforms(release):
    raw = json.loads(run(['skopeo', 'inspect', '--raw', 'oci-archive:%s' % MULTI], timeout=120).stdout)
    assert raw['mediaType'] == 'application/vnd.oci.image.index.v1+json'
    platforms = {(m['platform']['os'], m['platform']['architecture'], m['platform'].get('variant'))
                 : m for m in raw['manifests']}
    assert set(platforms) == {('linux', 'amd64', None), ('linux', 'arm64', 'v8')}, platforms
    for (_, arch, _), desc in platforms.items():
        manifest = oci_blob(MULTI, desc['digest'])
        assert oci_blob(MULTI, manifest['config']['digest'])['architecture'] == arch
        # the same image as the architecture's own archive
        single = DIST / (base({'amd64': 'x86_64', 'arm64': 'aarch64'}[arch]) + '.oci.tar')
        with tarfile.open(single) as t:
            index = json.loads(t.extractfile('index.json').read())
        assert index['manifests'][0]['digest'] == desc['digest']
    r = run(['skopeo', 'inspect', '--override-arch', 'arm64', 'oci-archive:%s' % MULTI], timeout=120)
    assert json.loads(r.stdout)['Architecture'] == 'arm64'


@pytest.mark.slow
def test_a_second_aarch64_build_elsewhere_is_byte_identical(release, tmp_path):
    tree = snapshot_tree(tmp_path / 'some' / 'deeper' / 'tree')
    env = dict(os.environ, NP_ARCH='aarch64', TZ='Pacific/Kiritimati', LC_ALL='C')
    for k in ('NP_BUILD_DIR', 'NP_BUNDLE_OUT', 'NP_VARIANT', 'NP_MODULES'):
        env.pop(k, None)
    old = os.umask(0o027)
    try:
        run(['bash', 'build/build.sh'], timeout=2400, cwd=tree, env=env)
    finally:
        os.umask(old)
    again = tree / 'dist'
    assert sha(again / (base('aarch64') + '.tar.gz')) == sha(DIST / (base('aarch64') + '.tar.gz'))
    assert sha(again / 'nginx-portable-aarch64' / 'sbin' / 'nginx') == \
        sha(DIST / 'nginx-portable-aarch64' / 'sbin' / 'nginx')
    assert str(tree).encode() not in (tree / '.build' / 'aarch64' / 'nginx' / 'objs' / 'nginx').read_bytes()
