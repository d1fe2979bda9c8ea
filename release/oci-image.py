#!/usr/bin/env python3
"""Build the OCI image of a bundle without a container engine.

The image is scratch-style: nothing but the bundle under /opt/nginx-portable,
/etc/passwd and /etc/group (root, nobody/nogroup, and the unprivileged user
`nginx` 65532:65532 that the image runs as), /etc/nsswitch.conf (`files dns`:
the static glibc needs no NSS modules), /etc/hosts, a CA bundle and /tmp.
logs/ and temp/ belong to the runtime user; everything else to root.
The image's conf/nginx.conf is the bundle's with the error log on stderr and
the access log on /dev/stdout, so `docker logs` and `kubectl logs` show them.

Output is byte-reproducible: sorted tar members with fixed owners, modes and
mtimes (SOURCE_DATE_EPOCH of the lock), gzip without name or time, JSON with
sorted keys.  Two layers: the base files, then the bundle.

    oci-image.py --bundle DIR --out IMAGE.oci.tar   OCI image layout as one tar
                                                  (skopeo/podman: oci-archive:,
                                                  docker load: also has manifest.json)
    oci-image.py --bundle DIR --layout DIR          the same, unpacked (umoci, skopeo oci:)
    oci-image.py --bundle DIR --rootfs DIR          only the root filesystem (Dockerfile)
    oci-image.py --bundle x86_64=DIR --bundle aarch64=DIR --out IMAGE.oci.tar
                                                  one multi-platform image: index.json
                                                  names an image index of both manifests
                                                  (no docker manifest.json: one platform only)

Labels (and manifest annotations) org.opencontainers.image.*: title,
description, version, created; revision (the checkout's git commit, `-dirty`
with uncommitted changes; --revision or NP_SOURCE_REVISION instead; none
outside a git checkout); source (--source or NP_SOURCE_URL: the project has no
public address of its own, so none by default); licenses (the SPDX licenses of
what the image holds: the lock's components, the static C/C++ runtime, the CA
bundle).
"""
import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import pathlib
import re
import stat
import subprocess
import sys
import tarfile

PREFIX = 'opt/nginx-portable'
UID = GID = 65532
PORTS = ('8080/tcp', '18080/tcp')

PASSWD = """root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nginx:x:{uid}:{gid}:nginx-portable:/{prefix}:/sbin/nologin
"""
GROUP = """root:x:0:
nogroup:x:65534:
nginx:x:{gid}:
"""
NSSWITCH = """# The static nginx has glibc's files and dns sources built in; no NSS modules.
passwd: files
group:  files
shadow: files
hosts:  files dns
"""
HOSTS = """127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
"""
# The default config's log files become the container's stderr/stdout.
# `error_log stderr` writes to fd 2 as inherited; `/dev/stdout` is opened
# (through /proc/self/fd/1), which the container runtime lets the image's user
# do by giving it the stdio pipes (runc: fixStdioPermissions).
CONTAINER_LOGS = (
    (re.compile(rb'^error_log logs/error\.log( \w+)?;$', re.M),
     rb"error_log stderr\1;  # the image: the container's stderr (release/oci-image.py)"),
    (re.compile(rb'^([ \t]+)access_log logs/access\.log;$', re.M),
     rb"\1access_log /dev/stdout;  # the image: the container's stdout (release/oci-image.py)"),
)


def container_config(conf):
    """conf/nginx.conf of the bundle -> the image's (each log line found once)."""
    for pattern, repl in CONTAINER_LOGS:
        conf, found = pattern.subn(repl, conf)
        if found != 1:
            sys.exit('conf/nginx.conf: %d lines match %s (want 1): update release/oci-image.py'
                     % (found, pattern.pattern.decode()))
    return conf


class Entry:
    __slots__ = ('path', 'kind', 'mode', 'uid', 'gid', 'data', 'target')

    def __init__(self, path, kind, mode, uid=0, gid=0, data=b'', target=''):
        self.path, self.kind, self.mode = path, kind, mode
        self.uid, self.gid, self.data, self.target = uid, gid, data, target


def norm_mode(st_mode, is_dir):
    """Builder-independent modes: rwxr-xr-x for dirs/executables, rw-r--r-- else."""
    if is_dir or st_mode & 0o111:
        return 0o755
    return 0o644


def base_entries(ca, uid, gid):
    def f(path, text, mode=0o644):
        return Entry(path, 'file', mode, data=text.encode() if isinstance(text, str) else text)
    fmt = dict(uid=uid, gid=gid, prefix=PREFIX)
    return [
        Entry('etc', 'dir', 0o755),
        f('etc/passwd', PASSWD.format(**fmt)),
        f('etc/group', GROUP.format(**fmt)),
        f('etc/nsswitch.conf', NSSWITCH),
        f('etc/hosts', HOSTS),
        Entry('etc/ssl', 'dir', 0o755),
        Entry('etc/ssl/certs', 'dir', 0o755),
        f('etc/ssl/certs/ca-certificates.crt', pathlib.Path(ca).read_bytes()),
        Entry('etc/ssl/cert.pem', 'symlink', 0o777, target='certs/ca-certificates.crt'),
        Entry('tmp', 'dir', 0o1777),
    ]


def bundle_entries(bundle, uid, gid):
    bundle = pathlib.Path(bundle)
    parts = PREFIX.split('/')
    out = [Entry('/'.join(parts[:i + 1]), 'dir', 0o755) for i in range(len(parts))]
    writable = {'logs', 'temp'}
    for dirpath, dirnames, filenames in os.walk(bundle):
        dirnames.sort()
        rel_dir = pathlib.Path(dirpath).relative_to(bundle)
        for name in sorted(dirnames) + sorted(filenames):
            p = pathlib.Path(dirpath, name)
            rel = (rel_dir / name).as_posix()
            st = p.lstat()
            # logs/ and temp/ are runtime state: ship them empty (but for .keep),
            # owned by the runtime user.
            if rel_dir.parts[:1] in (('logs',), ('temp',)) and name != '.keep':
                continue
            owner = (uid, gid) if rel in writable else (0, 0)
            path = PREFIX + '/' + rel
            if stat.S_ISLNK(st.st_mode):
                out.append(Entry(path, 'symlink', 0o777, *owner, target=os.readlink(p)))
            elif stat.S_ISDIR(st.st_mode):
                out.append(Entry(path, 'dir', norm_mode(st.st_mode, True), *owner))
            elif stat.S_ISREG(st.st_mode):
                data = p.read_bytes()
                if rel == 'conf/nginx.conf':
                    data = container_config(data)
                out.append(Entry(path, 'file', norm_mode(st.st_mode, False), *owner, data=data))
    return out


def sort_key(e):
    return e.path.split('/')


def layer_tar(entries, epoch):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT) as tar:
        for e in sorted(entries, key=sort_key):
            ti = tarfile.TarInfo(e.path + ('/' if e.kind == 'dir' else ''))
            ti.mtime, ti.mode, ti.uid, ti.gid = epoch, e.mode, e.uid, e.gid
            ti.uname = ti.gname = ''
            if e.kind == 'dir':
                ti.type = tarfile.DIRTYPE
                tar.addfile(ti)
            elif e.kind == 'symlink':
                ti.type, ti.linkname = tarfile.SYMTYPE, e.target
                tar.addfile(ti)
            else:
                ti.size = len(e.data)
                tar.addfile(ti, io.BytesIO(e.data))
    return buf.getvalue()


def gz(data):
    buf = io.BytesIO()
    with gzip.GzipFile(filename='', mode='wb', fileobj=buf, compresslevel=9, mtime=0) as g:
        g.write(data)
    return buf.getvalue()


def digest(data):
    return 'sha256:' + hashlib.sha256(data).hexdigest()


def jbytes(obj):
    return (json.dumps(obj, sort_keys=True, separators=(',', ':')) + '\n').encode()


def lock_epoch(root):
    for line in (root / 'build' / 'deps.lock').read_text().splitlines():
        f = line.split()
        if f[:1] == ['source-date-epoch']:
            return int(f[1])
    sys.exit('no source-date-epoch in deps.lock')


def lock_licenses(root):
    return [line.split()[3] for line in (root / 'build' / 'deps.lock').read_text().splitlines()
            if line.split()[:1] == ['component']]


# The CA bundle of the base layer (Debian's ca-certificates, as release/sbom.py says).
CA_LICENSES = ('MPL-2.0', 'GPL-2.0-or-later')


def image_licenses(root, arches):
    """One SPDX expression: every license of what the image holds, AND-ed:
    the lock's components, the C/C++ runtime linked in from the build host
    (release/sbom.py's TOOLCHAINS) and the CA bundle."""
    from sbom import TOOLCHAINS     # beside this file
    runtime = {lic for arch in arches for _, _, lic, _ in TOOLCHAINS[arch]}
    ids = sorted(set(lock_licenses(root)) | runtime | set(CA_LICENSES))
    return ' AND '.join('(%s)' % i if ' ' in i else i for i in ids)


def git_revision(root):
    """The commit of the checkout root is (with -dirty when tracked files
    differ from it), or None outside a git checkout of its own."""
    def git(*args):
        r = subprocess.run(['git', '-C', str(root), *args], capture_output=True, text=True, timeout=30)
        return r.returncode, r.stdout.strip()
    try:
        rc, top = git('rev-parse', '--show-toplevel')
        if rc != 0 or pathlib.Path(top).resolve() != root.resolve():
            return None
        rc, commit = git('rev-parse', 'HEAD')
        if rc != 0:
            return None
        dirty = git('diff', '--quiet', 'HEAD', '--')[0] != 0
    except (OSError, subprocess.TimeoutExpired):
        return None
    return commit + ('-dirty' if dirty else '')


def image_labels(a, root, version, created):
    labels = {
        'org.opencontainers.image.title': 'nginx-portable',
        'org.opencontainers.image.description':
            'static-pie nginx with lua-nginx-module, health checks and traffic status',
        'org.opencontainers.image.version': version,
        'org.opencontainers.image.created': created,
        'org.opencontainers.image.licenses': image_licenses(root, [arch for arch, _ in a.bundles]),
    }
    revision = a.revision if a.revision is not None else os.environ.get('NP_SOURCE_REVISION') or git_revision(root)
    source = a.source if a.source is not None else os.environ.get('NP_SOURCE_URL', '')
    if revision:
        labels['org.opencontainers.image.revision'] = revision
    if source:
        labels['org.opencontainers.image.source'] = source
    return labels


# Our architecture names (build/arch.sh) -> OCI platforms (Go's names).
PLATFORMS = {'x86_64': {'architecture': 'amd64'},
             'aarch64': {'architecture': 'arm64', 'variant': 'v8'}}


def image_manifest(bundle, arch, a, labels, epoch, created, blobs):
    """One platform's layers, config and manifest into blobs -> the manifest's descriptor."""
    layers_entries = [
        ('base: passwd, group, nsswitch.conf, hosts, CA bundle, /tmp', base_entries(a.ca, UID, GID)),
        ('bundle: /%s' % PREFIX, bundle_entries(bundle, UID, GID)),
    ]
    layers, diff_ids, history = [], [], []
    for what, entries in layers_entries:
        raw = layer_tar(entries, epoch)
        comp = gz(raw)
        blobs[digest(comp)] = comp
        diff_ids.append(digest(raw))
        layers.append({'mediaType': 'application/vnd.oci.image.layer.v1.tar+gzip',
                       'digest': digest(comp), 'size': len(comp)})
        history.append({'created': created, 'created_by': 'release/oci-image.py ' + what})
    prefix = '/' + PREFIX
    config = {
        'created': created,
        **PLATFORMS[arch],
        'os': 'linux',
        'config': {
            'User': '%d:%d' % (UID, GID),
            'ExposedPorts': {p: {} for p in PORTS},
            'Env': ['PATH=%s/sbin' % prefix],
            # -e stderr: what nginx logs before the config's error_log applies
            # (startup notices) goes to the container's stderr too.
            'Entrypoint': [prefix + '/sbin/nginx', '-p', prefix + '/', '-e', 'stderr', '-g', 'daemon off;'],
            'WorkingDir': prefix,
            'StopSignal': 'SIGQUIT',
            'Labels': labels,
        },
        'rootfs': {'type': 'layers', 'diff_ids': diff_ids},
        'history': history,
    }
    cfg = jbytes(config)
    blobs[digest(cfg)] = cfg
    manifest = {
        'schemaVersion': 2,
        'mediaType': 'application/vnd.oci.image.manifest.v1+json',
        'config': {'mediaType': 'application/vnd.oci.image.config.v1+json',
                   'digest': digest(cfg), 'size': len(cfg)},
        'layers': layers,
        'annotations': labels,
    }
    man = jbytes(manifest)
    blobs[digest(man)] = man
    return {'mediaType': 'application/vnd.oci.image.manifest.v1+json',
            'digest': digest(man), 'size': len(man),
            'platform': dict(PLATFORMS[arch], os='linux')}, cfg, layers


def build(a):
    root = pathlib.Path(__file__).resolve().parent.parent
    version = a.version or (root / 'VERSION').read_text().strip()
    epoch = a.epoch if a.epoch is not None else lock_epoch(root)
    created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
    if a.rootfs:
        (arch, bundle), = a.bundles
        write_rootfs(pathlib.Path(a.rootfs), base_entries(a.ca, UID, GID) + bundle_entries(bundle, UID, GID))
    if not (a.out or a.layout):
        return
    blobs = {}
    labels = image_labels(a, root, version, created)
    made = [image_manifest(bundle, arch, a, labels, epoch, created, blobs) for arch, bundle in a.bundles]
    ref = {'org.opencontainers.image.ref.name': version,
           'io.containerd.image.name': 'docker.io/library/nginx-portable:' + version}
    files = {'oci-layout': jbytes({'imageLayoutVersion': '1.0.0'})}
    if len(made) == 1:
        (desc, cfg, layers), = made
        top = dict(desc, annotations=ref)
        # docker load before Docker 25 reads only this file (one platform only).
        files['manifest.json'] = jbytes([{
            'Config': 'blobs/sha256/' + digest(cfg)[7:],
            'RepoTags': ['nginx-portable:' + version],
            'Layers': ['blobs/sha256/' + l['digest'][7:] for l in layers],
        }])
    else:
        # Several platforms: index.json names one image index (the tag), which
        # lists each platform's manifest -- what a registry serves for a
        # multi-platform tag, and what `skopeo inspect --raw` shows.
        nested = jbytes({'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.index.v1+json',
                         'manifests': [desc for desc, _, _ in made]})
        blobs[digest(nested)] = nested
        top = {'mediaType': 'application/vnd.oci.image.index.v1+json',
               'digest': digest(nested), 'size': len(nested), 'annotations': ref}
    files['index.json'] = jbytes({'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.index.v1+json',
                                  'manifests': [top]})
    for d, data in blobs.items():
        files['blobs/sha256/' + d[7:]] = data
    if a.layout:
        out = pathlib.Path(a.layout)
        (out / 'blobs' / 'sha256').mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (out / name).write_bytes(data)
    if a.out:
        entries = [Entry('blobs', 'dir', 0o755), Entry('blobs/sha256', 'dir', 0o755)]
        entries += [Entry(n, 'file', 0o644, data=d) for n, d in files.items()]
        tmp = pathlib.Path(str(a.out) + '.tmp')
        tmp.write_bytes(layer_tar(entries, epoch))
        tmp.replace(a.out)
    print(top['digest'])


def write_rootfs(dest, entries):
    """The image's filesystem as a directory (needs root for the owners)."""
    for e in sorted(entries, key=sort_key):
        p = dest / e.path
        if e.kind == 'dir':
            p.mkdir(parents=True, exist_ok=True)
        elif e.kind == 'symlink':
            if p.is_symlink() or p.exists():
                p.unlink()
            p.symlink_to(e.target)
            os.lchown(p, e.uid, e.gid)
            continue
        else:
            p.write_bytes(e.data)
        os.chown(p, e.uid, e.gid)
        os.chmod(p, e.mode)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--bundle', required=True, action='append',
                    help='the bundle directory (dist/nginx-portable), or ARCH=DIR (x86_64=..., '
                         'aarch64=...); repeat for a multi-platform image')
    ap.add_argument('--ca', default='/etc/ssl/certs/ca-certificates.crt', help='CA bundle to ship')
    ap.add_argument('--version', help='image tag (default: VERSION)')
    ap.add_argument('--epoch', type=int, help='timestamp (default: source-date-epoch of deps.lock)')
    ap.add_argument('--revision', help='label org.opencontainers.image.revision (default: NP_SOURCE_REVISION, '
                                       'else the git commit of this checkout; "" for none)')
    ap.add_argument('--source', help='label org.opencontainers.image.source, the URL of the source '
                                     '(default: NP_SOURCE_URL; none when empty)')
    ap.add_argument('--out', help='write the OCI layout as one tar archive')
    ap.add_argument('--layout', help='write the OCI layout into this directory')
    ap.add_argument('--rootfs', help='write the root filesystem into this directory (one bundle)')
    a = ap.parse_args()
    if not (a.out or a.layout or a.rootfs):
        ap.error('one of --out, --layout, --rootfs is required')
    a.bundles = []
    for spec in a.bundle:
        arch, sep, path = spec.partition('=')
        arch, path = (arch, path) if sep else ('x86_64', spec)
        if arch not in PLATFORMS:
            ap.error('unknown architecture %r (one of %s)' % (arch, ', '.join(PLATFORMS)))
        if not os.access(os.path.join(path, 'sbin', 'nginx'), os.X_OK):
            ap.error('no sbin/nginx in %s' % path)
        a.bundles.append((arch, path))
    if len({arch for arch, _ in a.bundles}) != len(a.bundles):
        ap.error('one bundle per architecture')
    if a.rootfs and len(a.bundles) != 1:
        ap.error('--rootfs takes one bundle')
    build(a)


if __name__ == '__main__':
    main()
