"""deploy/: the Kubernetes manifests parse and fit together, their nginx.conf runs
(health, readiness following the health checks, metrics), the systemd unit's
commands start/reload/stop the bundle, and the logrotate snippet rotates logs
with nginx reopening them."""
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest
import yaml

from relutil import NOBODY, have
from support.bundle import BUNDLE, IS_ASAN, ROOT, copy_bundle
from support.namespaces import NetNS
from support.net import wait_for

DEPLOY = ROOT / 'deploy'
K8S = DEPLOY / 'kubernetes'
HAS_HC = (BUNDLE / 'lualib' / 'resty' / 'upstream' / 'healthcheck.lua').is_file()


def k8s_docs():
    docs = {}
    for f in sorted(K8S.glob('*.yaml')):
        for d in yaml.safe_load_all(f.read_text()):
            if d:
                docs[(d['kind'], d['metadata']['name'])] = d
    return docs


def test_kubernetes_manifests_parse_and_agree():
    docs = k8s_docs()
    assert {k for k, _ in docs} >= {'Deployment', 'Service', 'ConfigMap', 'PodMonitor'}
    dep = docs[('Deployment', 'nginx-portable')]
    pod = dep['spec']['template']
    labels = pod['metadata']['labels']
    assert dep['spec']['selector']['matchLabels'].items() <= labels.items()
    assert dep['spec']['replicas'] >= 2
    c = pod['spec']['containers'][0]
    ports = {p['name']: p['containerPort'] for p in c['ports']}
    assert ports == {'http': 8080, 'status': 18080}
    for probe, path in (('readinessProbe', '/readyz'), ('livenessProbe', '/healthz')):
        assert c[probe]['httpGet']['path'] == path
        assert c[probe]['httpGet']['port'] in ports
    ann = pod['metadata']['annotations']
    assert ann['prometheus.io/scrape'] == 'true' and ann['prometheus.io/port'] == str(ports['status'])
    sec = pod['spec']['securityContext']
    assert sec['runAsNonRoot'] is True and sec['runAsUser'] == 65532
    svc = docs[('Service', 'nginx-portable')]
    assert svc['spec']['selector'].items() <= labels.items()
    assert svc['spec']['ports'][0]['targetPort'] in ports
    pm = docs[('PodMonitor', 'nginx-portable')]
    assert pm['spec']['selector']['matchLabels'].items() <= labels.items()
    assert pm['spec']['podMetricsEndpoints'][0]['port'] == 'status'
    # the ConfigMap is mounted where the args point
    cm = docs[('ConfigMap', 'nginx-portable')]
    mounts = {m['name']: m['mountPath'] for m in c['volumeMounts']}
    vol = next(v for v in pod['spec']['volumes'] if v.get('configMap', {}).get('name') == 'nginx-portable')
    assert c['args'] == ['-c', mounts[vol['name']] + '/nginx.conf']
    conf = cm['data']['nginx.conf']
    assert 'listen 8080;' in conf and 'listen 18080;' in conf
    assert 'location = /healthz' in conf and 'location = /readyz' in conf and 'location = /metrics' in conf
    # read-only root: everything nginx writes is on an emptyDir
    assert c['securityContext']['readOnlyRootFilesystem'] is True
    assert {'/opt/nginx-portable/logs', '/opt/nginx-portable/temp'} <= set(mounts.values())


def test_readme_explains_scaling_out():
    text = (DEPLOY / 'README.md').read_text().lower()
    assert 'replica' in text and 'load balancer' in text and 'own health checks' in text


BACKEND = textwrap.dedent('''
    import http.server, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"backend " + self.path.encode() + b"\\n"
            self.send_response(200); self.send_header("Content-Length", str(len(body)))
            self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
''')


@pytest.mark.skipif(IS_ASAN, reason='runs in a network namespace without the sanitizer setup')
@pytest.mark.skipif(not HAS_HC, reason='bundle has no lualib/resty/upstream/healthcheck.lua yet')
def test_kubernetes_config_serves_probes_and_metrics(tmp_path):
    conf = k8s_docs()[('ConfigMap', 'nginx-portable')]['data']['nginx.conf']
    prefix = copy_bundle(tmp_path / 'prefix')
    conf = conf.replace('/opt/nginx-portable/conf/mime.types', str(prefix / 'conf' / 'mime.types'))
    # (not :8080, which nginx itself listens on for every address)
    conf = re.sub(r'server backend\.\S+:8080', 'server 127.0.1.21:9090', conf)
    conf = conf.replace('interval = 2000', 'interval = 200').replace('timeout = 1000', 'timeout = 300')
    cfile = tmp_path / 'nginx.conf'
    cfile.write_text(conf)
    nginx = [str(prefix / 'sbin' / 'nginx'), '-p', str(prefix) + '/', '-c', str(cfile)]
    t = subprocess.run(nginx + ['-t'], capture_output=True, text=True, timeout=30)
    if 'unknown directive "vhost_traffic_status' in t.stderr:
        pytest.skip('bundle built without the traffic-status module')
    assert t.returncode == 0, t.stderr
    ns = NetNS()
    try:
        backend = ns.popen([sys.executable, '-c', BACKEND, '127.0.1.21', '9090'])
        wait_for(lambda: ns.http('http://127.0.1.21:9090/x')[0] == 200, what='backend')
        n = ns.popen(nginx + ['-g', 'daemon off;'])
        wait_for(lambda: ns.http('http://127.0.0.1:18080/healthz')[0] == 200, what='/healthz')
        assert ns.http('http://127.0.0.1:8080/hello') == (200, 'backend /hello')
        wait_for(lambda: ns.http('http://127.0.0.1:18080/readyz') == (200, 'ready'), what='/readyz 200')
        st, metrics = ns.http('http://127.0.0.1:18080/metrics')
        assert st == 200
        assert 'nginx_upstream_status_info{name="backend",endpoint="127.0.1.21:9090",status="UP",role="PRIMARY"} 1' \
            in metrics, metrics[:2000]
        assert 'nginx_metrics_source_up{source="healthcheck_module"} 1' in metrics
        # the backend dies: this replica's own checks turn it DOWN, readiness follows
        backend.kill()
        backend.wait(timeout=10)
        wait_for(lambda: ns.http('http://127.0.0.1:18080/readyz')[0] == 503, timeout=15, what='/readyz 503')
        assert ns.http('http://127.0.0.1:18080/healthz')[0] == 200          # but still alive
        n.send_signal(3)
        assert n.wait(timeout=20) == 0
    finally:
        ns.close()


@pytest.mark.skipif(IS_ASAN, reason='release bundle only')
def test_systemd_unit_commands_start_reload_stop(tmp_path):
    """Run the unit's Exec* lines the way systemd would (prefix moved to a temp
    dir, as the unit's User), in a private network namespace."""
    unit = (DEPLOY / 'systemd' / 'nginx-portable.service').read_text()
    if have('systemd-analyze'):
        r = subprocess.run(['systemd-analyze', 'verify', '--man=no', str(DEPLOY / 'systemd' / 'nginx-portable.service')],
                           capture_output=True, text=True, timeout=60)
        bad = [l for l in r.stderr.splitlines()
               if 'nginx-portable.service' in l and 'Command /opt/nginx-portable' not in l
               and 'user' not in l.lower()]
        assert not bad, r.stderr
    keys = {}
    for line in unit.splitlines():
        m = re.match(r'^(\w+)=(.*)$', line)
        if m:
            keys.setdefault(m.group(1), []).append(m.group(2))
    assert keys['Type'] == ['forking'] and keys['KillSignal'] == ['SIGQUIT']
    assert any(re.search(r'kill -HUP \$MAINPID', c) for c in keys['ExecReload'])
    prefix = copy_bundle(tmp_path / 'opt')
    for d in ('logs', 'temp'):
        os.chown(prefix / d, NOBODY, NOBODY)
    os.chmod(tmp_path, 0o755)

    def cmd(line, mainpid=None):
        line = line.replace('/opt/nginx-portable', str(prefix))
        if mainpid:
            line = line.replace('$MAINPID', str(mainpid))
        return ['setpriv', '--reuid=%d' % NOBODY, '--regid=%d' % NOBODY, '--clear-groups',
                'sh', '-c', line]
    pidfile = pathlib.Path(keys['PIDFile'][0].replace('/opt/nginx-portable', str(prefix)))
    ns = NetNS()
    try:
        for pre in keys['ExecStartPre']:
            assert ns.run(cmd(pre)).returncode == 0
        r = ns.run(cmd(keys['ExecStart'][0]))
        assert r.returncode == 0, r.stderr
        wait_for(lambda: pidfile.is_file() and pidfile.read_text().strip(), what='PIDFile')
        main = int(pidfile.read_text())
        wait_for(lambda: ns.http('http://127.0.0.1:8080/')[0] == 200, what='default config answers')

        def workers():
            out = subprocess.run(['ps', '-o', 'pid=,args=', '--ppid', str(main)], capture_output=True,
                                 text=True).stdout
            return {int(l.split()[0]) for l in out.splitlines()
                    if 'worker process' in l and 'shutting down' not in l}
        old = workers()
        assert old
        for rl in keys['ExecReload']:
            r = ns.run(cmd(rl, main))
            assert r.returncode == 0, r.stderr
        wait_for(lambda: workers() and not (workers() & old), what='new workers after HUP')
        assert int(pidfile.read_text()) == main
        assert ns.http('http://127.0.0.1:8080/')[0] == 200
        os.kill(main, 3)                           # KillSignal=SIGQUIT to the main process
        wait_for(lambda: not os.path.exists('/proc/%d' % main), timeout=20, what='graceful stop')
    finally:
        ns.close()


@pytest.mark.skipif(IS_ASAN, reason='release bundle only')
@pytest.mark.skipif(not have('logrotate'), reason='logrotate missing: bash build/install-deps.sh')
def test_logrotate_snippet_rotates_and_nginx_reopens(tmp_path, nginx_factory):
    from conftest import conf_wrap, free_port, http_get
    port = free_port()
    n = nginx_factory(conf_wrap('server { listen 127.0.0.1:%d; access_log logs/access.log;\n'
                                '         location / { return 200 "ok\\n"; } }' % port),
                      wait_ports=[('127.0.0.1', port)])
    assert http_get('127.0.0.1', port, '/before')[0] == 200
    logs = n.prefix / 'logs'
    wait_for(lambda: '/before' in (logs / 'access.log').read_text(), what='access log line')
    snippet = (DEPLOY / 'logrotate' / 'nginx-portable').read_text()
    assert 'kill -USR1' in snippet
    # the test prefix instead of /opt/nginx-portable, root instead of the service user
    snippet = snippet.replace('/opt/nginx-portable', str(n.prefix))
    snippet = re.sub(r'\bnginx-portable nginx-portable\b', 'root root', snippet)
    os.chmod(logs, 0o755)
    conf = tmp_path / 'logrotate.conf'
    conf.write_text(snippet)
    r = subprocess.run(['logrotate', '-f', '-s', str(tmp_path / 'state'), str(conf)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rotated = logs / 'access.log.1'
    assert rotated.is_file() and '/before' in rotated.read_text()
    # nginx reopens on USR1 (the workers a moment later): new lines reach the new file
    sent = []

    def logged_in_new_file():
        sent.append('/after-%d' % len(sent))
        assert http_get('127.0.0.1', port, sent[-1])[0] == 200
        new = logs / 'access.log'
        return new.exists() and sent[-1] in new.read_text()
    wait_for(logged_in_new_file, timeout=10, interval=0.1, what='nginx writing the new access.log')
    assert '/before' not in (logs / 'access.log').read_text()
