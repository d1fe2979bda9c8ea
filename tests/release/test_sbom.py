"""The SBOM is generated from build/deps.lock: every locked component with its
version, license and checksum; a Debian component with its Debian
version/revision ("patch level") and patch series, a git component with its
repository, tag, commit and tree (and no Debian purl); deterministic output.
Needs a bundle (NP_BUNDLE, default dist/nginx-portable): skipped without one."""
import hashlib
import json
import subprocess
import tarfile

import pytest

from conftest import BUNDLE, ROOT
from relutil import RELEASE, cyclonedx_schemas

LOCK = ROOT / 'build' / 'deps.lock'


def lock_components():
    comps, cur = {}, None
    for line in LOCK.read_text().splitlines():
        f = line.split()
        if not f or f[0].startswith('#'):
            continue
        if f[0] == 'component':
            cur = comps[f[1]] = {'version': f[2], 'license': f[3], 'files': {}}
        elif f[0] == 'debian':
            cur['debian'] = (f[1], f[2], f[3])
        elif f[0] == 'git':
            cur['git'] = (f[1], f[2], f[3], f[4])
        elif f[0] == 'file':
            cur['files'][f[1]] = f[2]
    return comps


@pytest.fixture(scope='module')
def sbom(tmp_path_factory):
    if not (BUNDLE / 'sbin' / 'nginx').is_file():
        pytest.skip('no bundle at %s (build/build.sh, or NP_BUNDLE)' % BUNDLE)
    tmp = tmp_path_factory.mktemp('sbom')
    tarball = tmp / 'bundle.tar.gz'
    with tarfile.open(tarball, 'w:gz') as t:
        t.add(BUNDLE / 'sbin' / 'nginx', 'nginx-portable/sbin/nginx')
    outs = []
    for i in range(2):
        out = tmp / ('sbom%d.json' % i)
        r = subprocess.run(['python3', str(RELEASE / 'sbom.py'), '--tarball', str(tarball), '--bundle',
                            str(BUNDLE), '--ca', '/etc/ssl/certs/ca-certificates.crt', '--require-patches',
                            '-o', str(out)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]                           # deterministic
    return json.loads(outs[0]), tarball


def test_every_locked_component_is_listed_with_its_facts(sbom):
    bom, _ = sbom
    assert bom['bomFormat'] == 'CycloneDX' and bom['specVersion'] == '1.5'
    by_name = {c['name']: c for c in bom['components']}
    kinds = set()
    for name, lc in lock_components().items():
        c = by_name[name]
        assert c['version'] == lc['version'], name
        assert c['licenses'] == [{'license': {'id': lc['license']}}], name
        # the hash is that of a file the lock pins
        assert c['hashes'][0]['alg'] == 'SHA-256' and c['hashes'][0]['content'] in lc['files'].values()
        props = {p['name']: p['value'] for p in c['properties']}
        if 'git' in lc:
            kinds.add('git')
            check_git_component(c, props, lc)
        else:
            kinds.add('debian')
            check_debian_component(c, props, lc)
    assert kinds == {'git', 'debian'}, kinds          # both paths of sbom.py were checked


def check_debian_component(c, props, lc):
    kind, pkg, dver = lc['debian']
    assert (props['debian:package'], props['debian:version']) == (pkg, dver), c['name']
    assert props['debian:revision'] == dver.split(':')[-1].rsplit('-', 1)[1], c['name']
    for fname, fsha in lc['files'].items():            # every pinned file is listed
        assert props['debian:file:' + fname] == 'sha256:' + fsha
    assert c['purl'].startswith('pkg:deb/debian/%s@' % pkg)
    if kind == 'source':
        assert int(props['debian:patch-count']) == len(c.get('pedigree', {}).get('patches', [])) \
            - int(props['nginx-portable:patch-count'])


def check_git_component(c, props, lc):
    repo, tag, commit, tree = lc['git']
    assert (props['git:repository'], props['git:tag'], props['git:commit'], props['git:tree']) == \
        (repo, tag, commit, tree), c['name']
    (fname, fsha), = lc['files'].items()
    assert props['git:file:' + fname] == 'sha256:' + fsha and c['hashes'][0]['content'] == fsha
    assert not any(k.startswith('debian:') for k in props), c['name']
    assert not c['purl'].startswith('pkg:deb/'), c['purl']
    if repo.startswith('https://github.com/'):
        owner_repo = repo.removeprefix('https://github.com/').lower()
        assert c['purl'] == 'pkg:github/%s@%s' % (owner_repo, tag)
    assert {'type': 'vcs', 'url': repo} == {k: v for k, v in c['externalReferences'][0].items() if k != 'comment'}
    assert c['pedigree']['commits'][0]['uid'] == commit
    assert len(c['pedigree'].get('patches', [])) == int(props['nginx-portable:patch-count'])


def test_security_patches_are_named(sbom):
    """Debian's patch series name the CVEs they fix (openssl's, today): those
    patches carry them under `resolves`."""
    bom, _ = sbom
    cves = {r['id'] for c in bom['components'] for p in c.get('pedigree', {}).get('patches', [])
            for r in p.get('resolves', [])}
    assert cves and all(c.startswith('CVE-') for c in cves)


def test_artifact_checksums_and_static_toolchain(sbom):
    bom, tarball = sbom
    assert bom['metadata']['component']['hashes'][0]['content'] == hashlib.sha256(tarball.read_bytes()).hexdigest()
    binary = next(c for c in bom['components'] if c['bom-ref'] == 'file:sbin/nginx')
    assert binary['hashes'][0]['content'] == hashlib.sha256((BUNDLE / 'sbin' / 'nginx').read_bytes()).hexdigest()
    refs = {c['bom-ref'] for c in bom['components']}
    assert 'glibc' in refs                              # statically linked, so it is a component
    deps = {d['ref']: set(d['dependsOn']) for d in bom['dependencies']}
    assert {'nginx', 'openssl', 'pcre2', 'zlib', 'luajit2', 'glibc'} <= deps['file:sbin/nginx']
    assert deps['nginx-portable'] == refs
    epoch = next(l.split()[1] for l in LOCK.read_text().splitlines() if l.startswith('source-date-epoch'))
    assert {'name': 'nginx-portable:source-date-epoch', 'value': epoch} in bom['metadata']['properties']


def test_sbom_with_its_vex_validates_against_cyclonedx_15(sbom, tmp_path):
    jsonschema = pytest.importorskip('jsonschema')
    bom, _ = sbom
    schemas = cyclonedx_schemas(tmp_path)
    main = schemas['bom-1.5.SNAPSHOT.schema.json']
    base = main['$id'].rsplit('/', 1)[0] + '/'   # $refs are relative to it: never fetched
    store = {}
    for name, s in schemas.items():
        for n in (name, name.replace('.SNAPSHOT', '')):
            store[n] = store[base + n] = s
    resolver = jsonschema.RefResolver.from_schema(main, store=store)
    jsonschema.Draft7Validator(main, resolver=resolver).validate(bom)
    vulns = bom['vulnerabilities']
    assert len(vulns) > 30
    refs = {c['bom-ref'] for c in bom['components']}
    states = set()
    for v in vulns:
        assert v['affects'][0]['ref'] in refs, v
        states.add(v['analysis']['state'])
    assert {'resolved_with_pedigree', 'not_affected', 'exploitable'} <= states
