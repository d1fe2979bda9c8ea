"""Helpers shared by the benchmarks: start an nginx on a throw-away prefix,
run wrk, take medians.  Every figure a benchmark reports is a ratio against a
baseline measured in the same run."""
import os
import pathlib
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import socket

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUNDLE = pathlib.Path(os.environ.get('NP_BUNDLE', ROOT / 'dist' / 'nginx-portable'))
NCPU = os.cpu_count() or 1


def process_gone(pid):
    """pid has exited: no such process, or a zombie its parent (init, for a
    daemonized nginx) has not reaped yet"""
    try:
        os.kill(pid, 0)
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] in ('Z', 'X')
    except (OSError, IndexError):
        return True


def wait_port(host, port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError('%s:%d did not open' % (host, port))


class Server:
    """An nginx (ours or another binary) on a temporary prefix."""

    def __init__(self, conf_text, binary=None, files=None, env=None):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix='np-bench-'))
        os.chmod(self.dir, 0o755)
        for d in ('conf', 'logs', 'temp', 'html'):
            (self.dir / d).mkdir()
        shutil.copy(BUNDLE / 'conf' / 'mime.types', self.dir / 'conf')
        if binary is None:
            (self.dir / 'lualib').symlink_to(BUNDLE / 'lualib')
        for name, data in (files or {}).items():
            p = self.dir / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data if isinstance(data, bytes) else data.encode())
        (self.dir / 'conf' / 'nginx.conf').write_text(conf_text)
        self.binary = binary or str(BUNDLE / 'sbin' / 'nginx')
        self.env = dict(os.environ, **(env or {}))

    def start(self, *ports):
        cmd = [self.binary, '-p', str(self.dir) + '/', '-c', 'conf/nginx.conf', '-e', 'logs/error.log']
        subprocess.run(cmd, check=True, env=self.env)
        for port in ports:
            wait_port('127.0.0.1', port)
        # the sockets listen before the daemonized master writes its pid file:
        # stop() needs the pid (else it would delete a running nginx's prefix)
        pid_file = self.dir / 'logs' / 'nginx.pid'
        for _ in range(200):
            if pid_file.exists() and pid_file.read_text().strip():
                break
            time.sleep(0.05)
        return self

    def pid(self):
        return int((self.dir / 'logs' / 'nginx.pid').read_text())

    def stop(self):
        try:
            pid = self.pid()
            os.kill(pid, signal.SIGQUIT)
            for _ in range(200):
                if process_gone(pid):
                    break
                time.sleep(0.05)
        except (OSError, ValueError):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def wrk(url, seconds=4, connections=32, threads=1, cpu=None, headers=()):
    """Requests/s from one wrk run (pinned to `cpu` when given)."""
    cmd = ['wrk', '-t%d' % threads, '-c%d' % connections, '-d%ds' % seconds]
    for h in headers:
        cmd += ['-H', h]
    cmd.append(url)
    if cpu is not None and shutil.which('taskset'):
        cmd = ['taskset', '-c', str(cpu)] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    m = re.search(r'Requests/sec:\s+([\d.]+)', out)
    errors = re.search(r'Non-2xx or 3xx responses: (\d+)', out)
    if errors:
        raise RuntimeError('wrk saw errors:\n' + out)
    return float(m.group(1))


def alternate(runs, *measures):
    """Run the measure functions in turn `runs` times; medians in the same order."""
    results = [[] for _ in measures]
    for _ in range(runs):
        for i, m in enumerate(measures):
            results[i].append(m())
    return [statistics.median(r) for r in results], results


def main_conf(http_body, workers=1, affinity=True, main=''):
    aff = 'worker_cpu_affinity 01;' if affinity and workers == 1 and NCPU > 1 else ''
    return f"""
daemon on;
worker_processes {workers};
{aff}
pid logs/nginx.pid;
error_log logs/error.log warn;
{main}
events {{ worker_connections 4096; }}
http {{
    access_log off;
    include mime.types;
    keepalive_requests 1000000;
{http_body}
}}
"""
