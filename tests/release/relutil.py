"""Helpers for the release tests: root filesystems run with chroot as an
unprivileged user (optionally set up the way a container runtime does: /proc,
/dev, volumes, read-only root, stdio pipes given to the user) inside a private
network namespace (support.namespaces.NetNS: the default config listens on fixed
ports 8080/18080, so each test gets its own loopback), HTTP through curl inside
the namespace, the Kubernetes manifests, ELF checks."""
import os
import pathlib
import re
import shutil
import signal
import subprocess
import threading

import yaml

from support.bundle import CRASH_MARKERS, ROOT
from support.net import wait_for
from support.probes import status_peers

RELEASE = ROOT / 'release'
K8S = ROOT / 'deploy' / 'kubernetes'
NOBODY = 65534


def k8s_docs():
    """{(kind, name): manifest} of deploy/kubernetes/*.yaml."""
    docs = {}
    for f in sorted(K8S.glob('*.yaml')):
        for d in yaml.safe_load_all(f.read_text()):
            if d:
                docs[(d['kind'], d['metadata']['name'])] = d
    return docs


# The example's backend, run in the test's network namespace.
K8S_BACKEND_ADDR = ('127.0.1.21', 9090)
K8S_BACKEND = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"backend " + self.path.encode() + b"\\n"
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"""


def k8s_test_conf():
    """The ConfigMap's nginx.conf with the backend Service name replaced by
    K8S_BACKEND_ADDR (not :8080, which nginx itself listens on for every
    address) and checks 10x as frequent."""
    conf = k8s_docs()[('ConfigMap', 'nginx-portable')]['data']['nginx.conf']
    conf = re.sub(r'server backend\.\S+:8080', 'server %s:%d' % K8S_BACKEND_ADDR, conf)
    return conf.replace('interval = 2000', 'interval = 200').replace('timeout = 1000', 'timeout = 300')


def have(tool):
    return shutil.which(tool) is not None


def chroot_cmd(rootfs, args, uid, gid):
    return ['chroot', '--userspec=%d:%d' % (uid, gid), '--groups=%d' % gid, str(rootfs), *args]


def proc_ids(pid):
    """(real uid, effective uid) of a process."""
    text = pathlib.Path('/proc/%d/status' % pid).read_text()
    uids = re.search(r'^Uid:\s+(\d+)\s+(\d+)', text, re.M)
    return int(uids.group(1)), int(uids.group(2))


def children(pid):
    out = subprocess.run(['ps', '-o', 'pid=', '--ppid', str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


class ChrootNginx:
    """nginx in the foreground (daemon off) inside rootfs, in a NetNS, as uid:gid."""

    def __init__(self, ns, rootfs, args, uid, gid, prefix):
        self.ns, self.rootfs, self.prefix = ns, pathlib.Path(rootfs), prefix
        self.proc = ns.popen(chroot_cmd(rootfs, args, uid, gid))

    @property
    def error_log(self):
        p = self.rootfs / self.prefix.lstrip('/') / 'logs' / 'error.log'
        return p.read_text(errors='replace') if p.exists() else ''

    def wait_ready(self, port=8080, timeout=20):
        def up():
            if self.proc.poll() is not None:
                raise AssertionError('nginx exited with %s:\n%s\n%s' % (
                    self.proc.returncode, self.output(), self.error_log[-3000:]))
            return self.ns.http('http://127.0.0.1:%d/' % port, timeout=2)[0] != 0
        wait_for(up, timeout=timeout, interval=0.1, what='nginx on :%d in the chroot' % port)

    def output(self):
        return self.proc.stdout.read().decode(errors='replace')

    def stop(self, timeout=20):
        """Graceful stop (the image's StopSignal); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError('nginx did not stop on SIGQUIT')
        return self.proc.returncode

    def crash_report(self):
        log = self.error_log
        return next((m for m in CRASH_MARKERS if m in log), None)


# What runc does before it starts the image's process, as far as a test needs:
# a private mount namespace, the rootfs bind-mounted on itself (to be made
# read-only), /proc, a tmpfs /dev with null and the fd/std* links, the volumes.
CONTAINER_SETUP = r"""
set -e
r=$1; ro=$2; userspec=$3; groups=$4; shift 4
mount --bind "$r" "$r"
mount -t proc -o nosuid,nodev,noexec proc "$r/proc"
mount -t tmpfs -o nosuid,mode=755,size=64k tmpfs "$r/dev"
touch "$r/dev/null" && mount --bind /dev/null "$r/dev/null"
ln -s /proc/self/fd "$r/dev/fd"
for i in 0:stdin 1:stdout 2:stderr; do ln -s "/proc/self/fd/${i%%:*}" "$r/dev/${i#*:}"; done
while [ "$1" != -- ]; do
    mount --bind "$1" "$r$2"
    [ "$3" = rw ] || mount -o remount,bind,ro "$r$2"
    shift 3
done
shift
[ "$ro" = rw ] || mount -o remount,bind,ro "$r"
exec chroot --userspec="$userspec" --groups="$groups" "$r" "$@"
"""


class ContainerNginx(ChrootNginx):
    """nginx run from an unpacked image the way `docker run` / a kubelet would:
    CONTAINER_SETUP, then the process as uid:gid with stdout and stderr on
    pipes owned by that user (runc's fixStdioPermissions), read into .out and
    .err (the `docker logs` streams).  volumes: [(host_dir, path, 'ro'|'rw')].
    Creates the mount points in rootfs, so give it a rootfs of its own."""

    def __init__(self, ns, rootfs, args, uid, gid, prefix, volumes=(), read_only_root=False):
        self.ns, self.rootfs, self.prefix = ns, pathlib.Path(rootfs), prefix
        for d in ['proc', 'dev'] + [v[1].lstrip('/') for v in volumes]:
            (self.rootfs / d).mkdir(parents=True, exist_ok=True)
        vol_args = [a for v in volumes for a in (str(v[0]), v[1], v[2])]
        cmd = ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', CONTAINER_SETUP, 'sh',
               str(self.rootfs), 'ro' if read_only_root else 'rw', '%d:%d' % (uid, gid), str(gid),
               *vol_args, '--', *args]

        def give_stdio_to_user():
            for fd in (1, 2):
                os.fchown(fd, uid, gid)
        self.proc = ns.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=give_stdio_to_user)
        self.out, self.err = bytearray(), bytearray()
        self.readers = [threading.Thread(target=self._drain, args=(f, buf), daemon=True)
                        for f, buf in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for r in self.readers:
            r.start()

    @staticmethod
    def _drain(f, buf):
        for chunk in iter(lambda: f.read1(65536), b''):
            buf.extend(chunk)

    def output(self):
        return (bytes(self.out) + bytes(self.err)).decode(errors='replace')

    @property
    def error_log(self):
        """What nginx logged: its stderr (and logs/error.log, if it wrote one)."""
        return super().error_log + bytes(self.err).decode(errors='replace')

    def stop(self, timeout=20):
        rc = super().stop(timeout)
        for r in self.readers:
            r.join(timeout=10)
        return rc


def elf_kind(path):
    """'exec', 'dyn' (shared object or PIE), or None for non-ELF files."""
    try:
        with open(path, 'rb') as f:
            head = f.read(18)
    except OSError:
        return None
    if head[:4] != b'\x7fELF':
        return None
    return {2: 'exec', 3: 'dyn'}.get(int.from_bytes(head[16:18], 'little'), 'other')


def has_interp(path):
    r = subprocess.run(['readelf', '-lW', str(path)], capture_output=True, text=True)
    return 'INTERP' in r.stdout


def check_default_config(ns, bundle_has_hc):
    """The default config answers on 8080 and 18080; health checks pass and
    the probes say alive and ready.
    Returns the reason when the health check part was skipped, else None."""
    status, body = ns.http('http://127.0.0.1:8080/')
    assert status == 200, (status, body[:500])
    if not bundle_has_hc:
        return 'bundle has no lualib/resty/upstream/healthcheck.lua yet (healthcheck library not landed)'
    last = {}

    def healthy():
        st, text = ns.http('http://127.0.0.1:18080/status')
        last['v'] = (st, text)
        peers = status_peers(text) if st == 200 else {}
        all_peers = [s for ps in peers.values() for _, s in ps]
        return st == 200 and all_peers and all(s == 'UP' for s in all_peers)
    try:
        wait_for(healthy, timeout=20, interval=0.3, what='every peer UP on :18080/status')
    except AssertionError:
        raise AssertionError('/status: %r' % (last.get('v'),))
    st, metrics = ns.http('http://127.0.0.1:18080/metrics')
    assert st == 200, (st, metrics[:500])
    assert 'nginx_metrics_source_up{source="healthcheck_module"} 1' in metrics, metrics[-1500:]
    # the probes a container runtime or kubelet would use (issue 28, item 5)
    assert ns.http('http://127.0.0.1:18080/healthz') == (200, 'ok')
    assert ns.http('http://127.0.0.1:18080/readyz') == (200, 'ready')
    return None


def run_script(args, cwd=None, env=None, timeout=600):
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, 'command %s failed (%d):\n%s\n%s' % (args, r.returncode, r.stdout[-3000:],
                                                                   r.stderr[-5000:])
    return r


# The CycloneDX JSON schemas come from an npm package, pinned by its sha256.
SCHEMA_PKG = '@cyclonedx/cyclonedx-library@10.3.0'
SCHEMA_PKG_SHA256 = '9833bd949052eb18218dd64b13ad62d9246f7395eef01c66dad08fcbacf74f01'


def cyclonedx_schemas(tmp_path):
    """{file name: schema} of the npm package (cached in .build/); skips offline."""
    import hashlib, io, json, tarfile
    import pytest
    if not have('npm'):
        pytest.skip('npm not installed (the schema comes from an npm package)')
    tgz = ROOT / '.build' / 'cyclonedx-schema' / 'package.tgz'
    if not tgz.is_file():
        tgz.parent.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(['npm', 'pack', '--silent', '--pack-destination', str(tmp_path), SCHEMA_PKG],
                           capture_output=True, text=True, timeout=180)
        packed = list(pathlib.Path(tmp_path).glob('*.tgz'))
        if r.returncode != 0 or not packed:
            pytest.skip('npm registry not reachable: %s' % r.stderr[-300:])
        shutil.move(str(packed[0]), tgz)
    data = tgz.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SCHEMA_PKG_SHA256
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        return {m.name.rsplit('/', 1)[1]: json.load(t.extractfile(m)) for m in t.getmembers()
                if m.name.startswith('package/res/schema/') and m.name.endswith('.schema.json')}
