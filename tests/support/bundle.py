"""nginx processes from the bundle under test (NP_BUNDLE, default
dist/nginx-portable): per-test prefixes, copies of the bundle, and the
`nginx_factory` fixture that stops what it started and fails the test on a
crash or sanitizer report in the error log.

NP_EXEC_WRAPPER (e.g. `qemu-aarch64-static`, set by tests/run.sh for
NP_ARCH=aarch64) is put in front of every nginx command line; unset, the
binary runs directly."""
import os
import pathlib
import shlex
import shutil
import signal
import subprocess

import pytest

from support.net import port_open, process_gone, wait_for

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUNDLE = pathlib.Path(os.environ.get('NP_BUNDLE', ROOT / 'dist' / 'nginx-portable'))
EXEC_WRAPPER = shlex.split(os.environ.get('NP_EXEC_WRAPPER', ''))


def _is_sanitizer_build():
    try:
        out = subprocess.run([*EXEC_WRAPPER, str(BUNDLE / 'sbin' / 'nginx'), '-V'], capture_output=True,
                             text=True, timeout=10).stderr
    except OSError:
        return False
    return '-fsanitize' in out


IS_ASAN = _is_sanitizer_build()

# Log lines that mean something went badly wrong, whatever the test checks.
CRASH_MARKERS = ('exited on signal', 'AddressSanitizer', 'runtime error:',
                 'LeakSanitizer', 'UndefinedBehaviorSanitizer', 'core dumped')


class Nginx:
    def __init__(self, prefix, env=None):
        self.prefix = pathlib.Path(prefix)
        self.env = dict(os.environ)
        if IS_ASAN:
            # Reports go to stderr, which nginx points at its error log.
            self.env.setdefault('ASAN_OPTIONS', 'detect_leaks=0:abort_on_error=1')
            self.env.setdefault('UBSAN_OPTIONS', 'print_stacktrace=1')
        self.env.update(env or {})

    @property
    def binary(self):
        return str(self.prefix / 'sbin' / 'nginx')

    @property
    def error_log(self):
        p = self.prefix / 'logs' / 'error.log'
        return p.read_text(errors='replace') if p.exists() else ''

    def command(self, *args):
        """The nginx command line with -p (and the exec wrapper, if any)."""
        return [*EXEC_WRAPPER, self.binary, '-p', str(self.prefix) + '/', *args]

    def run(self, *args, check=False, timeout=30):
        return subprocess.run(self.command(*args),
                              env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=check)

    def test_config(self):
        return self.run('-t')

    def master_pid(self):
        try:
            return int((self.prefix / 'logs' / 'nginx.pid').read_text().strip())
        except (OSError, ValueError):
            return None

    def worker_pids(self):
        mp = self.master_pid()
        if not mp:
            return []
        out = subprocess.run(['ps', '-o', 'pid=,args=', '--ppid', str(mp)],
                             capture_output=True, text=True).stdout
        if EXEC_WRAPPER:
            # An emulator keeps its own argv: no process titles to tell
            # workers from helper processes, so every child counts.
            return sorted(int(l.split()[0]) for l in out.splitlines())
        return sorted(int(l.split()[0]) for l in out.splitlines()
                      if 'worker process' in l and 'shutting down' not in l)

    def start(self, workers=None, wait_ports=()):
        r = self.run()
        if r.returncode != 0:
            raise AssertionError('nginx failed to start:\n%s\n%s' % (r.stderr, self.error_log))
        wait_for(self.master_pid, what='pid file')
        if workers:
            wait_for(lambda: len(self.worker_pids()) >= workers, what='%d workers' % workers)
        for host, port in wait_ports:
            wait_for(lambda: port_open(host, port), what='%s:%d' % (host, port))
        return self

    def signal(self, sig):
        os.kill(self.master_pid(), sig)

    def reload(self, timeout=15):
        """HUP and wait until the old workers are gone and new ones run."""
        old = set(self.worker_pids())
        self.signal(signal.SIGHUP)
        wait_for(lambda: (set(self.worker_pids()) - old) and not (old & set(self.worker_pids())),
                 timeout=timeout, what='reload to finish')

    def stop(self, timeout=15):
        pid = self.master_pid()
        if not pid:
            return
        try:
            os.kill(pid, signal.SIGQUIT)
        except ProcessLookupError:
            return

        try:
            wait_for(lambda: process_gone(pid), timeout=timeout, what='nginx to quit')
        except AssertionError:
            os.kill(pid, signal.SIGKILL)
            raise

    def sanitizer_reports(self):
        logs = self.prefix / 'logs'
        return ''.join(p.read_text(errors='replace') for p in logs.glob('[au]bsan*')) \
            if logs.exists() else ''

    def crash_report(self):
        """The first crash marker in the error log (or a sanitizer log), else None."""
        log = self.error_log + self.sanitizer_reports()
        # a Lua error a test provokes ("lua entry thread aborted: runtime
        # error: ...") is not UBSan's "file:line:col: runtime error:"
        log = log.replace('thread aborted: runtime error:', '')
        return next((m for m in CRASH_MARKERS if m in log), None)


def snapshot_tree(dest):
    """The tree's tracked and not-ignored untracked files (the work in progress
    of everyone included), without .build/ and dist/."""
    files = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                           cwd=ROOT, capture_output=True, check=True).stdout.split(b'\0')
    for f in files:
        if not f:
            continue
        src = ROOT / os.fsdecode(f)
        if not src.exists() and not src.is_symlink():
            continue                                  # deleted in the work tree
        dst = dest / os.fsdecode(f)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst, follow_symlinks=False)
    return dest


def copy_bundle(dest, src=None):
    """A full copy of the bundle (binary, conf, lualib) at dest, without the
    runtime state of logs/ and temp/ (their .keep stays), which exist."""
    src, dest = pathlib.Path(src or BUNDLE), pathlib.Path(dest)
    state_dirs = {str(src / 'logs'), str(src / 'temp')}
    shutil.copytree(src, dest, symlinks=True,
                    ignore=lambda d, names: [n for n in names
                                             if d in state_dirs and n != '.keep'])
    for d in ('logs', 'temp'):
        (dest / d).mkdir(exist_ok=True)
    return dest


def make_prefix(path, conf_text=None, copy_binary=False):
    """A prefix directory using the bundle's binary and lualib (linked, or copied)."""
    path = pathlib.Path(path)
    (path / 'conf').mkdir(parents=True, exist_ok=True)
    (path / 'logs').mkdir(exist_ok=True)
    (path / 'temp').mkdir(exist_ok=True)
    shutil.copy(BUNDLE / 'conf' / 'mime.types', path / 'conf' / 'mime.types')
    for d in ('sbin', 'lualib'):
        if copy_binary:
            shutil.copytree(BUNDLE / d, path / d, symlinks=False)
        elif not (path / d).exists():
            (path / d).symlink_to(BUNDLE / d)
    if conf_text is not None:
        (path / 'conf' / 'nginx.conf').write_text(conf_text)
    return path


@pytest.fixture(scope='session', autouse=True)
def _traversable_tmp(tmp_path_factory):
    """Workers of a root-started nginx run as `nobody`: let them reach the
    per-test prefixes, which pytest creates under 0700 directories."""
    base = tmp_path_factory.getbasetemp()
    for d in (base, base.parent):
        if d.owner() == 'root' and str(d).startswith('/tmp/'):
            os.chmod(d, 0o755)


@pytest.fixture(autouse=True)
def _traversable_test_tmp(tmp_path):
    os.chmod(tmp_path, 0o755)


@pytest.fixture
def nginx_factory(tmp_path):
    """nginx_factory(conf_text, name='n', env=None, start=True, workers=None, copy=False)"""
    started = []

    def make(conf_text, name='n', env=None, start=True, workers=None, wait_ports=(), copy=False):
        prefix = make_prefix(tmp_path / name, conf_text, copy_binary=copy)
        n = Nginx(prefix, env)
        started.append(n)           # stopped at teardown even if started later by the test
        if start:
            n.start(workers=workers, wait_ports=wait_ports)
        return n

    yield make
    problems = []
    for n in started:
        if n.master_pid() is None:
            continue
        try:
            n.stop()
        except Exception as e:  # still check the logs
            problems.append('stop failed: %s' % e)
        marker = n.crash_report()
        if marker:
            log = n.error_log + n.sanitizer_reports()
            problems.append('%s: "%s" in error log:\n%s' % (n.prefix, marker, log[-4000:]))
    if problems:
        pytest.fail('\n'.join(problems))
