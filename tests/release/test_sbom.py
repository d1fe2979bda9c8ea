"""The SBOM is generated from build/deps.lock: every locked component with its
version, license, checksum and Debian version/revision ("patch level") and the
Debian patch series, deterministic output."""
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
        elif f[0] == 'file':
            cur['files'][f[1]] = f[2]
    return comps


@pytest.fixture(scope='module')
def sbom(tmp_path_factory):
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
    for name, lc in lock_components().items():
        c = by_name[name]
        assert c['version'] == lc['version'], name
        assert c['licenses'] == [{'license': {'id': lc['license']}}], name
        props = {p['name']: p['value'] for p in c['properties']}
        kind, pkg, dver = lc['debian']
        assert (props['debian:package'], props['debian:version']) == (pkg, dver), name
        assert props['debian:revision'] == dver.split(':')[-1].rsplit('-', 1)[1], name
        # the hash is that of a file the lock pins, and every pinned file is listed
        assert c['hashes'][0]['alg'] == 'SHA-256' and c['hashes'][0]['content'] in lc['files'].values()
        for fname, fsha in lc['files'].items():
            assert props['debian:file:' + fname] == 'sha256:' + fsha
        assert c['purl'].startswith('pkg:deb/debian/%s@' % pkg)
        if kind == 'source':
            assert int(props['debian:patch-count']) == len(c.get('pedigree', {}).get('patches', [])) \
                - int(props['nginx-portable:patch-count'])


def test_security_patches_are_named(sbom):
    bom, _ = sbom
    nginx = next(c for c in bom['components'] if c['name'] == 'nginx')
    cves = {r['id'] for p in nginx['pedigree']['patches'] for r in p.get('resolves', [])}
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
