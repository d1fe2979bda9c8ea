"""The OCI image: built without a daemon from the bundle, inspected with skopeo,
unpacked with umoci, and its entrypoint run as the image's non-root user in a
chroot set up the way a container runtime does (own network and mount
namespace, /proc, /dev, stdio pipes): the default config answers, health checks
pass, and the access and error logs come out on stdout and stderr (`docker logs`).
"""
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile

import pytest

from relutil import K8S_BACKEND, K8S_BACKEND_ADDR, RELEASE, ContainerNginx, check_default_config, \
    elf_kind, has_interp, have, k8s_docs, k8s_test_conf, proc_ids, children, run_script
from support.bundle import BUNDLE, IS_ASAN, copy_bundle
from support.namespaces import NetNS
from support.net import wait_for

pytestmark = [
    pytest.mark.skipif(IS_ASAN, reason='the image ships the release build (the ASan one is dynamic)'),
    pytest.mark.skipif(not (have('skopeo') and have('umoci')),
                       reason='skopeo/umoci missing: bash build/install-deps.sh'),
]

PREFIX = '/opt/nginx-portable'
VERSION = (RELEASE.parent / 'VERSION').read_text().strip()
HAS_HC = (BUNDLE / 'lualib' / 'resty' / 'upstream' / 'healthcheck.lua').is_file()


def build_image(tmp, bundle=BUNDLE, umask=None, tz=None):
    tmp.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TZ=tz or os.environ.get('TZ', 'UTC'))
    pre = (lambda: os.umask(umask)) if umask is not None else None
    r = subprocess.run(['python3', str(RELEASE / 'oci-image.py'), '--bundle', str(bundle),
                        '--out', str(tmp / 'image.oci.tar'), '--layout', str(tmp / 'layout')],
                       capture_output=True, text=True, env=env, preexec_fn=pre, timeout=120)
    assert r.returncode == 0, r.stderr
    return tmp / 'image.oci.tar', tmp / 'layout', r.stdout.strip()


@pytest.fixture(scope='module')
def image(tmp_path_factory):
    return build_image(tmp_path_factory.mktemp('image'))


def skopeo_json(*args):
    r = subprocess.run(['skopeo', 'inspect', *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_skopeo_inspect_archive_and_layout(image):
    archive, layout, digest = image
    info = skopeo_json('oci-archive:%s' % archive)
    assert info['Digest'] == digest
    assert info['Architecture'] == 'amd64' and info['Os'] == 'linux'
    assert len(info['Layers']) == 2
    assert info['Labels']['org.opencontainers.image.version'] == VERSION
    assert skopeo_json('oci:%s:%s' % (layout, VERSION))['Digest'] == digest
    cfg = skopeo_json('--config', 'oci-archive:%s' % archive)['config']
    assert cfg['User'] == '65532:65532'            # numeric: runAsNonRoot can verify it
    assert set(cfg['ExposedPorts']) == {'8080/tcp', '18080/tcp'}
    assert cfg['Entrypoint'] == [PREFIX + '/sbin/nginx', '-p', PREFIX + '/', '-e', 'stderr', '-g', 'daemon off;']
    assert cfg['StopSignal'] == 'SIGQUIT'


def test_docker_load_formats(image, tmp_path):
    """docker load: Docker >= 25 reads index.json, older ones manifest.json; skopeo
    converts to the classic docker-archive too."""
    archive, layout, digest = image
    with tarfile.open(archive) as t:
        names = t.getnames()
        manifest = json.load(t.extractfile('manifest.json'))
        index = json.load(t.extractfile('index.json'))
        for m in t.getmembers():
            assert (m.uid, m.gid, m.mtime) == (0, 0, t.getmember('index.json').mtime)
    assert {'oci-layout', 'index.json', 'manifest.json'} <= set(names)
    assert manifest[0]['RepoTags'] == ['nginx-portable:%s' % VERSION]
    for blob in [manifest[0]['Config']] + manifest[0]['Layers']:
        assert blob in names
    assert index['manifests'][0]['digest'] == digest
    out = tmp_path / 'docker.tar'
    r = subprocess.run(['skopeo', 'copy', '--quiet', 'oci-archive:%s' % archive,
                        'docker-archive:%s:nginx-portable:%s' % (out, VERSION)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with tarfile.open(out) as t:
        tags = json.load(t.extractfile('manifest.json'))[0]['RepoTags']
    assert tags[0].endswith('nginx-portable:%s' % VERSION), tags


def test_image_is_reproducible(image, tmp_path):
    """Another copy of the bundle, another directory, umask and time zone: same bytes."""
    archive, _, digest = image
    other = copy_bundle(tmp_path / 'elsewhere' / 'bundle-copy')
    os.utime(other / 'sbin' / 'nginx', (1, 1))                 # mtimes must not matter
    archive2, _, digest2 = build_image(tmp_path / 'second', bundle=other, umask=0o077, tz='Asia/Tokyo')
    assert digest2 == digest
    assert hashlib.sha256(archive2.read_bytes()).hexdigest() == hashlib.sha256(archive.read_bytes()).hexdigest()


def unpack(layout, dest):
    run_script(['umoci', 'unpack', '--image', '%s:%s' % (layout, VERSION), str(dest)], timeout=120)
    os.chmod(dest, 0o755)
    return dest


@pytest.fixture(scope='module')
def unpacked(image, tmp_path_factory):
    """The image as umoci unpacks it (left untouched: compared with --rootfs)."""
    return unpack(image[1], tmp_path_factory.mktemp('umoci') / 'bundle')


@pytest.fixture
def container(image, tmp_path):
    """A fresh unpack for one run (the run adds mount points), and its process spec."""
    dest = unpack(image[1], tmp_path / 'bundle')
    return dest / 'rootfs', json.loads((dest / 'config.json').read_text())['process']


def test_unpacked_root_is_scratch_style(unpacked):
    rootfs = unpacked / 'rootfs'
    assert sorted(p.name for p in rootfs.iterdir()) == ['etc', 'opt', 'tmp']
    elves = [p for p in rootfs.rglob('*') if p.is_file() and not p.is_symlink() and elf_kind(p)]
    assert elves == [rootfs / 'opt/nginx-portable/sbin/nginx'], elves      # no shared libraries at all
    assert not has_interp(elves[0])
    passwd = (rootfs / 'etc/passwd').read_text()
    assert 'nginx:x:65532:65532:' in passwd and 'nobody:x:65534:' in passwd
    assert 'nginx:x:65532:' in (rootfs / 'etc/group').read_text()
    assert 'BEGIN CERTIFICATE' in (rootfs / 'etc/ssl/certs/ca-certificates.crt').read_text()
    for d in ('logs', 'temp'):
        st = (rootfs / 'opt/nginx-portable' / d).stat()
        assert (st.st_uid, st.st_gid) == (65532, 65532), d
    st = (rootfs / 'opt/nginx-portable/conf/nginx.conf').stat()
    assert st.st_uid == 0 and not st.st_mode & 0o022           # the config is not the user's to change


def test_entrypoint_runs_as_non_root_and_answers(container):
    """Run what umoci's runtime config says (args, uid, gid, cwd), as `docker run` would."""
    rootfs, proc = container
    uid, gid = proc['user']['uid'], proc['user']['gid']
    assert uid != 0 and gid != 0
    assert proc['args'][0] == PREFIX + '/sbin/nginx'
    ns = NetNS()
    n = None
    try:
        n = ContainerNginx(ns, rootfs, proc['args'], uid, gid, PREFIX)
        n.wait_ready(8080)
        master = n.proc.pid
        assert proc_ids(master) == (uid, uid)
        workers = children(master)
        assert workers and all(proc_ids(w) == (uid, uid) for w in workers)
        skipped = check_default_config(ns, HAS_HC)
        assert ns.http('http://127.0.0.1:8080/docker-logs')[0] == 200
        wait_for(lambda: b'"GET /docker-logs HTTP/1.1" 200 ' in n.out, what='access log line on stdout')
        rc = n.stop()
        assert rc == 0, n.error_log[-3000:]
        assert n.crash_report() is None, n.error_log[-3000:]
        assert '[emerg]' not in n.error_log and '[alert]' not in n.error_log, n.error_log[-3000:]
        # `docker logs`: the error log is stderr, the access log stdout; no log files
        err = n.err.decode(errors='replace')
        assert '[notice]' in err and 'start worker processes' in err and 'exit' in err, err[-3000:]
        assert b'[notice]' not in n.out and b'"GET / HTTP/1.1" 200 ' in n.out, bytes(n.out[-3000:])
        logs = rootfs / PREFIX.lstrip('/') / 'logs'
        assert sorted(p.name for p in logs.iterdir()) == ['.keep']
    finally:
        if n:
            n.stop()
        ns.close()
    if skipped:
        pytest.skip(skipped)


def pod_volumes(pod, c, tmp_path):
    """The Deployment's volumeMounts as (host dir, path, ro|rw): the ConfigMap
    (backend address made local, k8s_test_conf) and emptyDirs, owned by fsGroup."""
    out = []
    sources = {v['name']: v for v in pod['spec']['volumes']}
    for m in c['volumeMounts']:
        host = tmp_path / 'volumes' / m['name']
        host.mkdir(parents=True)
        if 'configMap' in sources[m['name']]:
            (host / 'nginx.conf').write_text(k8s_test_conf())
        else:
            assert 'emptyDir' in sources[m['name']], m
        os.chown(host, 0, pod['spec']['securityContext']['fsGroup'])
        os.chmod(host, 0o2775)
        out.append((host, m['mountPath'], 'ro' if m.get('readOnly') else 'rw'))
    return out


@pytest.mark.skipif(not HAS_HC, reason='bundle has no lualib/resty/upstream/healthcheck.lua yet')
def test_kubernetes_pod_as_far_as_a_chroot_goes(container, tmp_path):
    """The Deployment's container from this image: its args after the entrypoint,
    its user, its volumes, a read-only root; probes answer and `kubectl logs`
    (stdout/stderr) has the JSON access log and the error log."""
    rootfs, proc = container
    pod = k8s_docs()[('Deployment', 'nginx-portable')]['spec']['template']
    c = pod['spec']['containers'][0]
    sec = pod['spec']['securityContext']
    assert c['securityContext']['readOnlyRootFilesystem'] is True
    ns = NetNS()
    n = None
    try:
        ns.popen([sys.executable, '-c', K8S_BACKEND, K8S_BACKEND_ADDR[0], str(K8S_BACKEND_ADDR[1])])
        n = ContainerNginx(ns, rootfs, proc['args'] + c['args'], sec['runAsUser'], sec['runAsGroup'], PREFIX,
                           volumes=pod_volumes(pod, c, tmp_path), read_only_root=True)
        probe = lambda p: ns.http('http://127.0.0.1:%d%s' % (18080, c[p]['httpGet']['path']))  # noqa: E731
        wait_for(lambda: n.proc.poll() is None and probe('startupProbe')[0] == 200, timeout=30,
                 what='startup probe')
        wait_for(lambda: probe('readinessProbe') == (200, 'ready'), timeout=15, what='readiness')
        assert ns.http('http://127.0.0.1:8080/from-the-service') == (200, 'backend /from-the-service')
        wait_for(lambda: b'"uri":"/from-the-service"' in n.out, what='JSON access line on stdout')
        entries = [json.loads(line) for line in bytes(n.out).splitlines()]
        assert [(e['uri'], e['status']) for e in entries] == [('/from-the-service', 200)]
        assert n.stop() == 0, n.error_log[-3000:]
        assert b'start worker processes' in n.err and b'[emerg]' not in n.err and b'[alert]' not in n.err, \
            bytes(n.err[-3000:])
        # no log files (-e stderr: not even the startup error log); the pid file is removed on exit
        assert os.listdir(tmp_path / 'volumes' / 'logs') == []
    finally:
        if n:
            n.stop()
        ns.close()


def test_image_config_is_the_bundle_config_logging_to_stdio(unpacked):
    bundle = (BUNDLE / 'conf' / 'nginx.conf').read_text().splitlines()
    image = (unpacked / 'rootfs' / PREFIX.lstrip('/') / 'conf' / 'nginx.conf').read_text().splitlines()
    changed = [(a.split('#')[0].strip(), b.split('#')[0].strip()) for a, b in zip(bundle, image) if a != b]
    assert len(bundle) == len(image)
    assert changed == [('error_log logs/error.log notice;', 'error_log stderr notice;'),
                       ('access_log logs/access.log;', 'access_log /dev/stdout;')], changed


def tree_listing(root):
    out = []
    for p in sorted(root.rglob('*')):
        rel = str(p.relative_to(root))
        if rel.startswith(('opt/nginx-portable/logs/', 'opt/nginx-portable/temp/')) and p.name != '.keep':
            continue                  # written by the entrypoint test, which ran nginx in there
        st = p.lstat()
        kind = 'l' if p.is_symlink() else 'd' if p.is_dir() else 'f'
        data = os.readlink(p) if kind == 'l' else \
            hashlib.sha256(p.read_bytes()).hexdigest() if kind == 'f' else ''
        mode = '' if kind == 'l' else oct(st.st_mode & 0o7777)
        out.append((rel, kind, mode, st.st_uid, st.st_gid, data))
    return out


def test_rootfs_for_the_dockerfile_matches_the_image(unpacked, tmp_path):
    """release/Dockerfile copies `oci-image.py --rootfs` into a scratch image: same tree."""
    dest = tmp_path / 'rootfs'
    dest.mkdir()
    r = subprocess.run(['python3', str(RELEASE / 'oci-image.py'), '--bundle', str(BUNDLE), '--rootfs', str(dest)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert tree_listing(dest) == tree_listing(unpacked / 'rootfs')
    dockerfile = (RELEASE / 'Dockerfile').read_text()
    assert 'USER 65532:65532' in dockerfile and 'EXPOSE 8080 18080' in dockerfile
    assert 'ENTRYPOINT ["/opt/nginx-portable/sbin/nginx", "-p", "/opt/nginx-portable/", "-e", "stderr", "-g", "daemon off;"]' \
        in dockerfile


def git_revision():
    def git(*args):
        return subprocess.run(['git', '-C', str(RELEASE.parent), *args], capture_output=True, text=True)
    top = git('rev-parse', '--show-toplevel')
    if top.returncode != 0 or os.path.realpath(top.stdout.strip()) != os.path.realpath(RELEASE.parent):
        return None
    dirty = git('diff', '--quiet', 'HEAD', '--').returncode != 0
    return git('rev-parse', 'HEAD').stdout.strip() + ('-dirty' if dirty else '')


def test_labels_say_source_revision_and_licenses(image, tmp_path):
    """Issue 28, item 7: org.opencontainers.image.revision (the checkout's commit),
    .licenses (every component's license, from the lock), .source only when
    NP_SOURCE_URL names one (the project has no public address of its own)."""
    archive, _, _ = image
    labels = skopeo_json('oci-archive:%s' % archive)['Labels']
    lock = (RELEASE.parent / 'build' / 'deps.lock').read_text().splitlines()
    licenses = labels['org.opencontainers.image.licenses']
    for lic in {l.split()[3] for l in lock if l.split()[:1] == ['component']} | {'LGPL-2.1-or-later', 'MPL-2.0'}:
        assert re.search(r'(^|[ (])%s($|[ )])' % re.escape(lic), licenses), (lic, licenses)
    assert ' OR ' not in licenses and licenses.count(' AND ') >= 6
    rev = git_revision()
    if rev is None:
        assert 'org.opencontainers.image.revision' not in labels
    else:
        assert labels['org.opencontainers.image.revision'] == rev
        assert re.fullmatch(r'[0-9a-f]{40}(-dirty)?', rev)
    assert 'org.opencontainers.image.source' not in labels
    # the manifest carries the same annotations, the multi-arch index's readers see them
    with tarfile.open(archive) as t:
        index = json.load(t.extractfile('index.json'))
        manifest = json.load(t.extractfile('blobs/sha256/' + index['manifests'][0]['digest'][7:]))
    assert manifest['annotations'] == labels
    # NP_SOURCE_URL (release.sh passes the environment on) sets the source label
    r = subprocess.run(['python3', str(RELEASE / 'oci-image.py'), '--bundle', str(BUNDLE),
                        '--layout', str(tmp_path / 'layout')], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, NP_SOURCE_URL='https://example.com/nginx-portable.git'))
    assert r.returncode == 0, r.stderr
    labels = skopeo_json('oci:%s:%s' % (tmp_path / 'layout', VERSION))['Labels']
    assert labels['org.opencontainers.image.source'] == 'https://example.com/nginx-portable.git'
