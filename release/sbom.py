#!/usr/bin/env python3
"""CycloneDX 1.5 JSON SBOM of the release, generated from build/deps.lock.

Every `component` of the lock becomes a CycloneDX component with its version,
SPDX license id and the SHA-256 of the file the build consumed.  A Debian
component also gets a Debian purl, the Debian version and revision ("patch
level") and, when the unpacked sources are in the dependency cache, the Debian
patch series that `dpkg-source -x` applied (CVE ids taken from patch names).  A
git component (an upstream tag) gets its repository as a `vcs` reference, a
GitHub purl of the tag (pkg:generic with a vcs_url elsewhere), the tag, commit
and git tree id as properties and the commit in its pedigree; no Debian purl,
as no Debian package is involved.  Our own patches (build/patches/) and modules are
listed too, as are the static libraries of the build host's toolchain that end
up inside sbin/nginx (glibc, libstdc++, libgcc: not in the lock; their Debian
versions come from dpkg).  The `vulnerabilities` section is the VEX of
release/vex.json (release/vex.py), which SECURITY.md mirrors.

The output is a pure function of its inputs (timestamp = SOURCE_DATE_EPOCH of
the lock, serial number derived from the tarball checksum), so it is
reproducible like the artifacts it describes.

    sbom.py --root REPO --tarball T.tar.gz --bundle DIR [--arch aarch64] [--image OCI.tar]... [--ca FILE] -o OUT
"""
import argparse
import datetime
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import urllib.parse
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import vex  # noqa: E402  (release/vex.py: the VEX, from release/vex.json)

GCC_LICENSE = 'GPL-3.0-or-later WITH GCC-exception-3.1'
TOOLCHAINS = {
    # arch -> [(component, Debian binary package, SPDX license, static archive inside it)]
    'x86_64': [
        ('glibc', 'libc6-dev', 'LGPL-2.1-or-later', '/usr/lib/x86_64-linux-gnu/libc.a'),
        ('libstdc++', 'libstdc++-12-dev', GCC_LICENSE, '/usr/lib/gcc/x86_64-linux-gnu/12/libstdc++.a'),
        ('libgcc', 'libgcc-12-dev', GCC_LICENSE, '/usr/lib/gcc/x86_64-linux-gnu/12/libgcc.a'),
    ],
    # Debian's cross toolchain (build/arch.sh): its own, separately versioned glibc.
    'aarch64': [
        ('glibc', 'libc6-dev-arm64-cross', 'LGPL-2.1-or-later', '/usr/aarch64-linux-gnu/lib/libc.a'),
        ('libstdc++', 'libstdc++-12-dev-arm64-cross', GCC_LICENSE,
         '/usr/lib/gcc-cross/aarch64-linux-gnu/12/libstdc++.a'),
        ('libgcc', 'libgcc-12-dev-arm64-cross', GCC_LICENSE, '/usr/lib/gcc-cross/aarch64-linux-gnu/12/libgcc.a'),
    ],
}
CVE = re.compile(r'CVE-\d{4}-\d{4,}', re.I)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def tree_hash(root):
    """SHA-256 over the sorted `relpath sha256` lines of a directory."""
    lines = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = pathlib.Path(dirpath, name)
            lines.append('%s %s\n' % (p.relative_to(root).as_posix(), sha256_file(p)))
    return hashlib.sha256(''.join(sorted(lines)).encode()).hexdigest()


def parse_lock(path):
    """[{name, version, license, debian: (kind, pkg, ver) | None, git: (repo, tag, commit, tree) | None,
    files: [(name, sha)], upstream: (url, sum)}], epoch"""
    comps, cur, epoch = [], None, None
    for raw in pathlib.Path(path).read_text().splitlines():
        f = raw.split()
        if not f or f[0].startswith('#'):
            continue
        if f[0] == 'source-date-epoch':
            epoch = int(f[1])
        elif f[0] == 'component':
            cur = {'name': f[1], 'version': f[2], 'license': f[3], 'debian': None, 'git': None,
                   'files': [], 'upstream': None}
            comps.append(cur)
        elif f[0] == 'debian':
            cur['debian'] = (f[1], f[2], f[3])
        elif f[0] == 'git':
            cur['git'] = (f[1], f[2], f[3], f[4])
        elif f[0] == 'file':
            cur['files'].append((f[1], f[2]))
        elif f[0] == 'upstream':
            cur['upstream'] = (f[1], f[2])
    if epoch is None:
        sys.exit('deps.lock has no source-date-epoch')
    return comps, epoch


def debian_revision(version):
    v = version.split(':', 1)[-1]
    return v.rsplit('-', 1)[1] if '-' in v else 'native'


def purl_version(v):
    return v.replace('%', '%25').replace('+', '%2B').replace(':', '%3A').replace('~', '%7E')


def srcdir(root, name):
    """The unpacked source tree in the dependency cache (same helper as the build)."""
    r = subprocess.run(['bash', '-c', '. "$1/build/common.sh"; np_srcdir "$2"', '_', str(root), name],
                       capture_output=True, text=True)
    p = pathlib.Path(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip() else None
    return p if p and p.is_dir() else None


def debian_patches(root, name):
    d = srcdir(root, name)
    if d is None:
        return None
    series = d / 'debian' / 'patches' / 'series'
    if not series.is_file():
        return []
    out = []
    for line in series.read_text().splitlines():
        line = line.split('#', 1)[0].strip()
        if line:
            out.append(line.split()[0])
    return out


def patch_entry(kind, label):
    e = {'type': kind, 'diff': {'url': label}}
    cves = sorted(set(c.upper() for c in CVE.findall(label)))
    if cves:
        e['resolves'] = [{'type': 'security', 'id': c, 'name': c} for c in cves]
    return e


def our_patches(root, name):
    """Our patches of a component (build/patches/NAME/), in the order nginx.sh applies them."""
    return [patch_entry('unofficial', 'build/patches/%s/%s' % (name, p.name))
            for p in sorted((root / 'build' / 'patches' / name).glob('*.patch'))]


def third_party(root, c, require_patches):
    if c['git']:
        return git_component(root, c)
    return debian_component(root, c, require_patches)


def base_component(c):
    return {
        'type': 'application' if c['name'] == 'nginx' else 'library',
        'bom-ref': c['name'],
        'name': c['name'],
        'version': c['version'],
        'licenses': [{'license': {'id': c['license']}}],
    }


def git_purl(c):
    """pkg:github/OWNER/REPO@TAG for a GitHub repository, else pkg:generic with
    the repository and commit as vcs_url."""
    repo, tag, commit, tree = c['git']
    m = re.fullmatch(r'https://github\.com/([^/]+)/([^/]+?)(?:\.git)?/?', repo)
    if m:
        return 'pkg:github/%s/%s@%s' % (m.group(1).lower(), m.group(2).lower(), purl_version(tag))
    vcs = urllib.parse.quote('git+%s@%s' % (repo, commit), safe='/:')
    return 'pkg:generic/%s@%s?vcs_url=%s' % (c['name'], purl_version(c['version']), vcs)


def git_component(root, c):
    """An upstream git tag: the tarball the build consumed (its one file), the
    repository, tag, commit and tree id it is pinned by, and our patches."""
    repo, tag, commit, tree = c['git']
    comp = base_component(c)
    comp['hashes'] = [{'alg': 'SHA-256', 'content': sha} for _, sha in c['files'][:1]]
    comp['purl'] = git_purl(c)
    comp['externalReferences'] = [{'type': 'vcs', 'url': repo,
                                   'comment': 'tag %s, commit %s, git tree %s' % (tag, commit, tree)}]
    patches = our_patches(root, c['name'])
    comp['pedigree'] = {
        'notes': 'Upstream git tag %s of %s (commit %s; the unpacked tarball is verified against git tree %s)%s.'
                 % (tag, repo, commit, tree, '; our patches applied in this order' if patches else ''),
        'commits': [{'uid': commit, 'url': commit_url(repo, commit)}],
    }
    if patches:
        comp['pedigree']['patches'] = patches
    props = [('git:repository', repo), ('git:tag', tag), ('git:commit', commit), ('git:tree', tree)]
    props += [('git:file:' + name, 'sha256:' + sha) for name, sha in sorted(c['files'])]
    props.append(('nginx-portable:patch-count', str(len(patches))))
    comp['properties'] = [{'name': k, 'value': v} for k, v in props]
    return comp


def commit_url(repo, commit):
    """Where a forge shows the commit (GitHub and GitLab spell it alike)."""
    return '%s/commit/%s' % (repo.rstrip('/').removesuffix('.git'), commit)


def debian_component(root, c, require_patches):
    kind, pkg, dver = c['debian']
    files = dict(c['files'])
    up_url, up_sum = c['upstream'] or (None, 'unpublished')
    # The component's hash is that of the file the build consumed: Debian's
    # orig tarball (source packages) or the .deb (binary packages).
    main_file = next((n for n in files if '.orig.tar' in n and not n.endswith('.asc')), None) \
        or next((n for n in files if n.endswith('.deb')), None)
    hashes = [{'alg': 'SHA-256', 'content': files[main_file]}] if main_file else []
    up_hash = None
    if re.fullmatch(r'[0-9a-f]{64}', up_sum):
        up_hash = {'alg': 'SHA-256', 'content': up_sum}
    elif up_sum.startswith('sha512:'):
        up_hash = {'alg': 'SHA-512', 'content': up_sum[7:]}
    props = [
        ('debian:package', pkg),
        ('debian:main-file', main_file or 'none'),
        ('debian:package-type', kind),
        ('debian:version', dver),
        ('debian:revision', debian_revision(dver)),
    ]
    for name in sorted(files):
        props.append(('debian:file:' + name, 'sha256:' + files[name]))
    comp = base_component(c)
    comp['hashes'] = hashes
    comp['purl'] = 'pkg:deb/debian/%s@%s?%sdistro=debian-12' % (
        pkg, purl_version(dver), 'arch=source&' if kind in ('source', 'orig') else 'arch=all&')
    if up_url:
        ext = {'type': 'distribution', 'url': up_url,
               'comment': 'upstream release' + ('' if up_hash else ' (no published checksum)')}
        if up_hash:
            ext['hashes'] = [up_hash]
        comp['externalReferences'] = [ext]
    patches = []
    if kind == 'source':
        deb = debian_patches(root, c['name'])
        if deb is None:
            if require_patches:
                sys.exit('sources of %s are not in the dependency cache: run build/fetch.sh' % c['name'])
            props.append(('debian:patches', 'unknown (sources not unpacked)'))
        else:
            props.append(('debian:patch-count', str(len(deb))))
            patches += [patch_entry('backport' if CVE.search(n) else 'unofficial', 'debian/patches/' + n) for n in deb]
    ours = our_patches(root, c['name'])
    patches += ours
    props.append(('nginx-portable:patch-count', str(len(ours))))
    if patches:
        comp['pedigree'] = {
            'notes': 'Debian %s package %s %s (revision %s); patches applied in this order.' % (
                kind, pkg, dver, debian_revision(dver)),
            'patches': patches,
        }
    comp['properties'] = [{'name': k, 'value': v} for k, v in props]
    return comp


def dpkg_version(pkg, field='Version'):
    r = subprocess.run(['dpkg-query', '-W', '-f=${%s}' % field, pkg], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def toolchain(arch):
    out = []
    for name, pkg, lic, archive in TOOLCHAINS[arch]:
        ver = dpkg_version(pkg)
        if not ver:
            continue
        deb_arch = dpkg_version(pkg, 'Architecture')
        comp = {
            'type': 'library', 'bom-ref': name, 'name': name,
            'version': ver.split(':', 1)[-1].rsplit('-', 1)[0],
            'licenses': [{'expression': lic}] if ' ' in lic else [{'license': {'id': lic}}],
            'purl': 'pkg:deb/debian/%s@%s?arch=%s&distro=debian-12' % (pkg, purl_version(ver), deb_arch),
            'properties': [
                {'name': 'debian:package', 'value': pkg},
                {'name': 'debian:package-type', 'value': 'binary'},
                {'name': 'debian:version', 'value': ver},
                {'name': 'debian:revision', 'value': debian_revision(ver)},
                {'name': 'nginx-portable:pinned-by', 'value': 'build host (static archive linked into sbin/nginx)'},
            ],
        }
        if os.path.isfile(archive):
            comp['hashes'] = [{'alg': 'SHA-256', 'content': sha256_file(archive)}]
            comp['properties'].append({'name': 'nginx-portable:static-archive', 'value': archive})
        out.append(comp)
    return out


def ours(root, version, bundle):
    out = []
    mods = root / 'modules'
    for m in sorted(p for p in mods.iterdir() if (p / 'config').is_file()) if mods.is_dir() else []:
        out.append({'type': 'library', 'bom-ref': 'module:' + m.name, 'name': m.name, 'version': version,
                    'hashes': [{'alg': 'SHA-256', 'content': tree_hash(m)}],
                    'properties': [{'name': 'nginx-portable:hash-of', 'value': 'sorted "path sha256" lines of modules/%s' % m.name},
                                   {'name': 'nginx-portable:origin', 'value': 'this repository, compiled into sbin/nginx'}]})
    lualib = root / 'lualib'
    for f in sorted(lualib.rglob('*.lua')) if lualib.is_dir() else []:
        rel = f.relative_to(lualib).as_posix()
        shipped = bundle / 'lualib' / rel
        out.append({'type': 'file', 'bom-ref': 'lualib:' + rel, 'name': 'lualib/' + rel, 'version': version,
                    'hashes': [{'alg': 'SHA-256', 'content': sha256_file(shipped if shipped.is_file() else f)}],
                    'properties': [{'name': 'nginx-portable:origin', 'value': 'this repository, shipped as a runtime file'}]})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--root', type=pathlib.Path, default=pathlib.Path(__file__).resolve().parent.parent)
    ap.add_argument('--lock', type=pathlib.Path)
    ap.add_argument('--tarball', type=pathlib.Path, required=True)
    ap.add_argument('--bundle', type=pathlib.Path, required=True)
    ap.add_argument('--arch', default='x86_64', choices=sorted(TOOLCHAINS),
                    help='the architecture of the bundle (its toolchain archives are listed)')
    ap.add_argument('--image', type=pathlib.Path, action='append', default=[],
                    help='OCI archive holding this bundle (its checksum is recorded); may repeat')
    ap.add_argument('--ca', type=pathlib.Path, help='CA bundle shipped in the image')
    ap.add_argument('--require-patches', action='store_true',
                    help='fail unless every Debian source tree is in the cache')
    ap.add_argument('-o', '--output', type=pathlib.Path, required=True)
    a = ap.parse_args()
    root = a.root.resolve()
    lock = a.lock or root / 'build' / 'deps.lock'
    comps, epoch = parse_lock(lock)
    version = (root / 'VERSION').read_text().strip()
    tar_sha = sha256_file(a.tarball)
    nginx_sha = sha256_file(a.bundle / 'sbin' / 'nginx')
    created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')

    third = [third_party(root, c, a.require_patches) for c in comps]
    tool = toolchain(a.arch)
    own = ours(root, version, a.bundle)
    linked = [c['bom-ref'] for c in third if c['name'] not in ('lua-resty-core', 'lua-resty-lrucache')]
    linked += [c['bom-ref'] for c in tool] + [c['bom-ref'] for c in own if c['type'] == 'library']
    binary = {'type': 'file', 'bom-ref': 'file:sbin/nginx', 'name': 'sbin/nginx', 'version': version,
              'hashes': [{'alg': 'SHA-256', 'content': nginx_sha}],
              'properties': [{'name': 'nginx-portable:linkage', 'value': 'static-pie, no shared libraries'}]}
    components = [binary] + third + tool + own
    artifacts = [{'name': 'nginx-portable:artifact:' + a.tarball.name, 'value': 'sha256:' + tar_sha}]
    for image in a.image:
        artifacts.append({'name': 'nginx-portable:artifact:' + image.name,
                          'value': 'sha256:' + sha256_file(image)})
    if a.ca:
        ver = dpkg_version('ca-certificates') or 'unknown'
        components.append({
            'type': 'data', 'bom-ref': 'ca-certificates', 'name': 'ca-certificates',
            'version': ver, 'licenses': [{'expression': 'MPL-2.0 AND GPL-2.0-or-later'}],
            'hashes': [{'alg': 'SHA-256', 'content': sha256_file(a.ca)}],
            'purl': 'pkg:deb/debian/ca-certificates@%s?arch=all&distro=debian-12' % purl_version(ver),
            'properties': [{'name': 'debian:package', 'value': 'ca-certificates'},
                           {'name': 'debian:version', 'value': ver},
                           {'name': 'debian:revision', 'value': debian_revision(ver)},
                           {'name': 'nginx-portable:in', 'value': 'OCI image only (/etc/ssl/certs/ca-certificates.crt)'},
                           {'name': 'nginx-portable:pinned-by', 'value': 'build host'}]})

    bom = {
        'bomFormat': 'CycloneDX',
        'specVersion': '1.5',
        'serialNumber': 'urn:uuid:%s' % uuid.uuid5(uuid.NAMESPACE_URL,
                                                   'nginx-portable/%s/%s' % (version, tar_sha)),
        'version': 1,
        'metadata': {
            'timestamp': created,
            'tools': {'components': [{'type': 'application', 'name': 'nginx-portable release/sbom.py',
                                      'version': version}]},
            'component': {
                'type': 'application', 'bom-ref': 'nginx-portable', 'name': 'nginx-portable',
                'version': version, 'description': 'static-pie nginx with Lua runtime modules, relocatable bundle',
                'hashes': [{'alg': 'SHA-256', 'content': tar_sha}],
            },
            'properties': [
                {'name': 'nginx-portable:source-date-epoch', 'value': str(epoch)},
                {'name': 'nginx-portable:architecture', 'value': a.arch},
                {'name': 'nginx-portable:lock-sha256', 'value': sha256_file(lock)},
            ] + artifacts,
        },
        'components': components,
        'vulnerabilities': vex.vulnerabilities({c['name']: c['bom-ref'] for c in third}),
        'dependencies': [
            {'ref': 'nginx-portable', 'dependsOn': sorted(c['bom-ref'] for c in components)},
            {'ref': 'file:sbin/nginx', 'dependsOn': sorted(linked)},
        ],
    }
    text = json.dumps(bom, indent=2, sort_keys=False, ensure_ascii=True) + '\n'
    a.output.write_text(text)
    print(a.output)


if __name__ == '__main__':
    main()
