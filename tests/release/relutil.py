"""Helpers for the release tests: a private network namespace (the default
config listens on fixed ports 8080/18080, so each test gets its own loopback),
root filesystems run with chroot as an unprivileged user, HTTP through curl
inside the namespace."""
import pathlib
import re
import shutil
import signal
import subprocess


from conftest import CRASH_MARKERS, ROOT, wait_for

RELEASE = ROOT / 'release'
NOBODY = 65534


def have(tool):
    return shutil.which(tool) is not None


class NetNS:
    """A network namespace with only `lo` (up), kept alive by a bounded sleep."""

    def __init__(self):
        self.holder = subprocess.Popen(
            ['unshare', '--net', 'sh', '-c', 'ip link set lo up && exec sleep 600'],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs = []
        wait_for(self._lo_up, timeout=10, what='loopback up in the new namespace')

    @property
    def path(self):
        return '/proc/%d/ns/net' % self.holder.pid

    def _lo_up(self):
        r = subprocess.run(['nsenter', '--net=' + self.path, 'ip', '-o', 'link', 'show', 'lo'],
                           capture_output=True, text=True)
        return r.returncode == 0 and 'UP' in r.stdout.split('>')[0]

    def popen(self, cmd, **kw):
        kw.setdefault('stdin', subprocess.DEVNULL)
        kw.setdefault('stdout', subprocess.PIPE)
        kw.setdefault('stderr', subprocess.STDOUT)
        p = subprocess.Popen(['nsenter', '--net=' + self.path, *cmd], **kw)
        self.procs.append(p)
        return p

    def run(self, cmd, timeout=30):
        return subprocess.run(['nsenter', '--net=' + self.path, *cmd], capture_output=True,
                              text=True, timeout=timeout)

    def http(self, url, timeout=5):
        """(status, body) of a GET inside the namespace; status 0 = no answer."""
        r = self.run(['curl', '-s', '-o', '-', '-w', '\n%{http_code}', '--max-time', str(timeout), url],
                     timeout=timeout + 5)
        body, _, code = r.stdout.rpartition('\n')
        try:
            return int(code), body.rstrip('\n')
        except ValueError:
            return 0, r.stdout

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        self.holder.kill()
        self.holder.wait(timeout=10)


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
                    self.proc.returncode, self.proc.stdout.read().decode(errors='replace'),
                    self.error_log[-3000:]))
            return self.ns.http('http://127.0.0.1:%d/' % port, timeout=2)[0] != 0
        wait_for(up, timeout=timeout, interval=0.1, what='nginx on :%d in the chroot' % port)

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


def status_peers(text):
    """{upstream: [(peer, state)]} from hc.status_page()."""
    out, cur = {}, None
    for line in text.splitlines():
        m = re.match(r'^Upstream (\S+)', line)
        if m:
            cur = out.setdefault(m.group(1), [])
            continue
        m = re.match(r'^\s{8}(\S+) (UP|DOWN)\s*$', line)
        if m and cur is not None:
            cur.append((m.group(1), m.group(2)))
    return out


def check_default_config(ns, bundle_has_hc):
    """The default config answers on 8080 and 18080; health checks pass.
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
    return None


def copy_bundle(src, dest):
    """Copy a bundle without its runtime state (logs, temp contents)."""
    shutil.copytree(src, dest, symlinks=True,
                    ignore=lambda d, names: [n for n in names if pathlib.Path(d).name in ('logs', 'temp')
                                             and n != '.keep'])
    return pathlib.Path(dest)


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
