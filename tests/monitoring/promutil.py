"""What the monitoring tests need: a real Prometheus (Debian's) scraping a
bundle on loopback, its HTTP API, and the shipped dashboard's and alert
rules' files with Grafana's variables filled in for evaluation."""
import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request

import pytest
import yaml

from support.bundle import ROOT
from support.net import free_port, port_open, wait_for

DASHBOARD = ROOT / 'deploy' / 'grafana' / 'nginx-portable.json'
RULES = ROOT / 'deploy' / 'prometheus' / 'nginx-portable-alerts.yml'
RULES_TEST = ROOT / 'deploy' / 'prometheus' / 'nginx-portable-alerts.test.yml'
JOB = 'nginx-portable'

# What Grafana puts in place of its own variables, and of the dashboard's
# (every value: "All", i.e. the allValue .*).  A rate window of 10 s holds
# ten 1 s scrapes.
GRAFANA_VARS = {'__rate_interval': '10s', '__interval': '1s', '__range': '1m'}


def promtool():
    exe = shutil.which('promtool')
    assert exe, 'promtool (Debian package prometheus) is required'
    return exe


def prometheus_binary():
    exe = shutil.which('prometheus')
    assert exe, 'prometheus (Debian package prometheus) is required'
    return exe


def substitute(expr, variables):
    """expr with $name, ${name} and [[name]] replaced (longest names first)."""
    for name in sorted(variables, key=len, reverse=True):
        value = variables[name]
        expr = re.sub(r'\$\{%s(?::\w+)?\}|\[\[%s\]\]|\$%s\b' % (name, name, name), lambda _: value, expr)
    return expr


def dashboard():
    return json.loads(DASHBOARD.read_text())


def dashboard_variables(dash):
    values = dict(GRAFANA_VARS)
    for v in dash['templating']['list']:
        if v['type'] == 'query':
            values[v['name']] = v.get('allValue') or '.*'
    return values


def panel_queries(dash):
    """[(panel title, refId, expr)] of every panel, rows' nested panels too."""
    out = []
    for p in dash['panels']:
        for q in [p] + p.get('panels', []):
            for t in q.get('targets', []):
                out.append((q['title'], t['refId'], t['expr']))
    return out


class Prometheus:
    """prometheus on 127.0.0.1 with its data and config under workdir;
    scrapes targets every second and evaluates rule_files every second."""

    def __init__(self, workdir, targets, rule_files=()):
        self.port = free_port()
        self.workdir = workdir
        config = {
            'global': {'scrape_interval': '1s', 'evaluation_interval': '1s', 'scrape_timeout': '1s'},
            'rule_files': [str(f) for f in rule_files],
            'scrape_configs': [{'job_name': JOB, 'metrics_path': '/metrics',
                                'static_configs': [{'targets': list(targets)}]}],
        }
        self.config = workdir / 'prometheus.yml'
        self.config.write_text(yaml.safe_dump(config))
        check = subprocess.run([promtool(), 'check', 'config', str(self.config)],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        self.log = open(workdir / 'prometheus.log', 'wb')
        self.proc = subprocess.Popen(
            [prometheus_binary(), '--config.file=' + str(self.config),
             '--storage.tsdb.path=' + str(workdir / 'data'),
             '--web.listen-address=127.0.0.1:%d' % self.port, '--log.level=warn'],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.proc.poll() is not None or port_open('127.0.0.1', self.port),
                 timeout=30, interval=0.1, what='prometheus listening')
        assert self.proc.poll() is None, (workdir / 'prometheus.log').read_text()[-3000:]
        # it listens before its storage is open (503 until then)
        wait_for(self.ready, timeout=30, interval=0.1, what='prometheus ready')

    def ready(self):
        try:
            with urllib.request.urlopen('http://127.0.0.1:%d/-/ready' % self.port, timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path, **params):
        url = 'http://127.0.0.1:%d/api/v1/%s' % (self.port, path)
        if params:
            url += '?' + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            doc = json.loads(r.read())
        assert doc['status'] == 'success', doc
        return doc['data']

    def query(self, expr):
        """The result list of an instant query (empty: no data)."""
        return self.api('query', query=expr)['result']

    def rules(self):
        return [r for g in self.api('rules')['groups'] for r in g['rules']]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def prometheus_factory(tmp_path):
    made = []

    def make(targets, rule_files=()):
        d = tmp_path / ('prometheus%d' % len(made))
        d.mkdir()
        p = Prometheus(d, targets, rule_files)
        made.append(p)
        return p
    yield make
    for p in made:
        p.stop()
