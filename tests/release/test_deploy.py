"""deploy/: the Kubernetes manifests parse and fit together, their nginx.conf runs
(liveness, readiness = checkers running, a live peer per upstream apart, metrics), the systemd unit's
commands start/reload/stop the bundle, and the logrotate snippet rotates logs
with nginx reopening them."""
import json
import os
import pathlib
import re
import subprocess
import sys
import tarfile

import pytest

from relutil import K8S_BACKEND, K8S_BACKEND_ADDR, NOBODY, have, k8s_docs, k8s_test_conf
from support.bundle import BUNDLE, IS_ASAN, ROOT, copy_bundle
from support.namespaces import NetNS
from support.net import wait_for
from support.probes import status_peers

DEPLOY = ROOT / 'deploy'
HAS_HC = (BUNDLE / 'lualib' / 'resty' / 'upstream' / 'healthcheck.lua').is_file()


def test_kubernetes_manifests_parse_and_agree():
    docs = k8s_docs()
    assert {k for k, _ in docs} >= {'Deployment', 'Service', 'ConfigMap', 'PodMonitor', 'ServiceMonitor',
                                    'PodDisruptionBudget'}
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
    # kubectl logs: the error log on stderr, JSON access lines on stdout
    assert re.search(r'^\s*error_log stderr \w+;', conf, re.M)
    assert 'include /opt/nginx-portable/conf/log-json.conf;' in conf
    assert re.search(r'^\s*access_log /dev/stdout json;', conf, re.M)
    assert not re.search(r'^\s*(access|error)_log logs/', conf, re.M)


def test_kubernetes_disruptions_and_monitoring():
    docs = k8s_docs()
    pod = docs[('Deployment', 'nginx-portable')]['spec']['template']
    labels, c = pod['metadata']['labels'], pod['spec']['containers'][0]
    replicas = docs[('Deployment', 'nginx-portable')]['spec']['replicas']
    pdb = docs[('PodDisruptionBudget', 'nginx-portable')]
    assert pdb['apiVersion'] == 'policy/v1'
    assert pdb['spec']['selector']['matchLabels'].items() <= labels.items()
    assert 0 < pdb['spec']['maxUnavailable'] < replicas
    # preStop: the kubelet's sleep action (no shell in the image), then the stop signal;
    # the grace period covers the sleep and nginx's graceful quit
    pre = c['lifecycle']['preStop']
    assert list(pre) == ['sleep'] and pre['sleep']['seconds'] > 0
    assert pod['spec']['terminationGracePeriodSeconds'] >= pre['sleep']['seconds'] + 30
    # ServiceMonitor -> the headless metrics Service only -> the pods' status port
    sm = docs[('ServiceMonitor', 'nginx-portable')]
    services = [d for (kind, _), d in docs.items() if kind == 'Service']
    selected = [s for s in services if sm['spec']['selector']['matchLabels'].items()
                <= s['metadata']['labels'].items()]
    assert [s['metadata']['name'] for s in selected] == ['nginx-portable-metrics']
    msvc = selected[0]
    assert msvc['spec']['clusterIP'] == 'None' and msvc['spec']['selector'].items() <= labels.items()
    ports = {p['name']: p for p in msvc['spec']['ports']}
    assert [e['port'] for e in sm['spec']['endpoints']] == ['status'] and 'status' in ports
    assert ports['status']['targetPort'] == 'status' in {p['name'] for p in c['ports']}
    assert sm['spec']['endpoints'][0]['path'] == '/metrics'
    # the client Service does not expose the status port
    assert {p['targetPort'] for p in docs[('Service', 'nginx-portable')]['spec']['ports']} == {'http'}


def test_readme_explains_scaling_out():
    text = (DEPLOY / 'README.md').read_text().lower()
    assert 'replica' in text and 'load balancer' in text and 'own health checks' in text


@pytest.mark.skipif(IS_ASAN, reason='runs in a network namespace without the sanitizer setup')
@pytest.mark.skipif(not HAS_HC, reason='bundle has no lualib/resty/upstream/healthcheck.lua yet')
def test_kubernetes_config_serves_probes_and_metrics(tmp_path):
    prefix = copy_bundle(tmp_path / 'prefix')
    conf = k8s_test_conf().replace('/opt/nginx-portable/conf/', str(prefix / 'conf') + '/')
    cfile = tmp_path / 'nginx.conf'
    cfile.write_text(conf)
    nginx = [str(prefix / 'sbin' / 'nginx'), '-p', str(prefix) + '/', '-c', str(cfile)]
    t = subprocess.run(nginx + ['-t'], capture_output=True, text=True, timeout=30)
    if 'unknown directive "vhost_traffic_status' in t.stderr:
        pytest.skip('bundle built without the traffic-status module')
    assert t.returncode == 0, t.stderr
    ns = NetNS()
    try:
        backend = ns.popen([sys.executable, '-c', K8S_BACKEND, K8S_BACKEND_ADDR[0], str(K8S_BACKEND_ADDR[1])])
        wait_for(lambda: ns.http('http://127.0.1.21:9090/x')[0] == 200, timeout=30, what='backend')
        out, err = tmp_path / 'stdout', tmp_path / 'stderr'       # what kubectl logs shows
        with open(out, 'wb') as o, open(err, 'wb') as e:
            n = ns.popen(nginx + ['-g', 'daemon off;'], stdout=o, stderr=e)
        wait_for(lambda: ns.http('http://127.0.0.1:18080/healthz')[0] == 200, what='/healthz')
        assert ns.http('http://127.0.0.1:8080/hello') == (200, 'backend /hello')
        wait_for(lambda: ns.http('http://127.0.0.1:18080/readyz') == (200, 'ready'), what='/readyz 200')
        st, metrics = ns.http('http://127.0.0.1:18080/metrics')
        assert st == 200
        assert 'nginx_upstream_status_info{name="backend",endpoint="127.0.1.21:9090",status="UP",role="PRIMARY"} 1' \
            in metrics, metrics[:2000]
        assert 'nginx_metrics_source_up{source="healthcheck_module"} 1' in metrics
        assert re.search(r'^nginx_portable_build_info\{version="[^"]+",nginx="[^"]+",openssl="[^"]+",'
                         r'luajit="[^"]+",lua_nginx_module="\d+\.\d+\.\d+"\} 1$', metrics, re.M), metrics[-1500:]
        # kubectl logs: a JSON line per proxied request on stdout, the error log on stderr
        wait_for(lambda: b'"uri":"/hello"' in out.read_bytes(), what='JSON access line on stdout')
        entry = json.loads(out.read_bytes().splitlines()[0])
        assert (entry['uri'], entry['status'], entry['upstream_addr']) == ('/hello', 200, '127.0.1.21:9090')
        assert b'[notice]' in err.read_bytes() and b'[notice]' not in out.read_bytes()
        assert ns.http('http://127.0.0.1:18080/readyz/upstreams') == (200, 'live')
        # the backend dies: this replica's own checks turn it DOWN; the live-peer endpoint
        # says so, readiness does not (issue 28, item 5: a backend outage unreadied every
        # replica at once and emptied the Service)
        backend.kill()
        backend.wait(timeout=10)
        wait_for(lambda: ns.http('http://127.0.0.1:18080/readyz/upstreams') ==
                 (503, 'not live: no live peer in upstream backend'), timeout=15, what='/readyz/upstreams 503')
        assert ns.http('http://127.0.0.1:18080/readyz') == (200, 'ready')
        assert ns.http('http://127.0.0.1:18080/healthz')[0] == 200
        # every failed check of the dead peer is the checker's to log (once per 10 s), not
        # the socket's as well (issue 27, item 12: the ConfigMap left lua_socket_log_errors on)
        wait_for(lambda: b'failed to connect to 127.0.1.21:9090' in err.read_bytes(), what="the checker's line")
        assert b'connect() failed' not in err.read_bytes(), err.read_bytes()[-2000:]
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


UNIT = DEPLOY / 'systemd' / 'nginx-portable.service'
HARDENING = ('ProtectClock=yes', 'ProtectKernelLogs=yes', 'ProtectHostname=yes', 'RestrictNamespaces=yes',
             'RestrictRealtime=yes', 'RestrictSUIDSGID=yes', 'SystemCallArchitectures=native',
             'SystemCallFilter=@system-service', 'ProtectProc=invisible', 'UMask=0027')


@pytest.mark.skipif(not have('systemd-analyze'), reason='systemd-analyze missing: bash build/install-deps.sh')
def test_systemd_unit_exposure_is_below_the_old_score():
    """`systemd-analyze security --offline` rated the unit 4.8 before these settings."""
    lines = UNIT.read_text().splitlines()
    assert all(h in lines for h in HARDENING), [h for h in HARDENING if h not in lines]
    # LuaJIT and PCRE's JIT need writable+executable pages
    assert not any(l.startswith('MemoryDenyWriteExecute=') for l in lines)
    r = subprocess.run(['systemd-analyze', 'security', '--offline=yes', '--no-pager', str(UNIT)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r'Overall exposure level for nginx-portable\.service: (\d+\.\d+)', r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    assert float(m.group(1)) < 4.8, r.stdout


def syscall_groups():
    """{'@group': {names and @subgroups}} as systemd-analyze lists them."""
    out = subprocess.run(['systemd-analyze', 'syscall-filter', '--no-pager'], capture_output=True, text=True,
                         timeout=60).stdout
    groups, cur = {}, None
    for line in out.splitlines():
        if line.startswith('@'):
            cur = groups.setdefault(line.strip(), set())
        elif cur is not None and line.strip() and not line.strip().startswith('#'):
            cur.add(line.strip())
    return groups


def expand(groups, name):
    out = set()
    for item in groups[name]:
        out |= expand(groups, item) if item.startswith('@') else {item}
    return out


@pytest.mark.skipif(IS_ASAN, reason='release bundle only')
@pytest.mark.skipif(not HAS_HC, reason='bundle has no lualib/resty/upstream/healthcheck.lua yet')
@pytest.mark.skipif(not (have('strace') and have('systemd-analyze')), reason='strace/systemd-analyze missing')
def test_systemd_syscall_filter_allows_what_nginx_calls(tmp_path):
    """Every system call the unit's commands make (config test, start with the
    default config, proxying over http and https, health checks, HUP, USR1,
    QUIT), traced with strace, is in SystemCallFilter=@system-service."""
    allowed = expand(syscall_groups(), '@system-service')
    assert {'openat', 'epoll_wait', 'accept4', 'sendfile', 'mprotect'} <= allowed
    prefix = copy_bundle(tmp_path / 'opt')
    for d in ('logs', 'temp'):
        os.chown(prefix / d, NOBODY, NOBODY)
    os.chmod(tmp_path, 0o755)
    nginx = [str(prefix / 'sbin' / 'nginx'), '-p', str(prefix) + '/']
    as_service = ['setpriv', '--reuid=%d' % NOBODY, '--regid=%d' % NOBODY, '--clear-groups']
    traces, trace_dir = [], tmp_path / 'traces'
    trace_dir.mkdir()
    os.chown(trace_dir, NOBODY, NOBODY)

    def traced(args, name):
        traces.append(trace_dir / name)
        return as_service + ['strace', '-f', '-c', '-o', str(traces[-1])] + args
    ns = NetNS()
    try:
        assert ns.run(traced(nginx + ['-t', '-q'], 'configtest')).returncode == 0
        tracer = ns.popen(traced(nginx, 'run'))
        pidfile = prefix / 'logs' / 'nginx.pid'
        wait_for(lambda: pidfile.is_file() and pidfile.read_text().strip(), timeout=30, what='PIDFile')
        main = int(pidfile.read_text())
        wait_for(lambda: [s for ps in status_peers(ns.http('http://127.0.0.1:18080/status')[1]).values()
                          for _, s in ps] == ['UP'] * 4, timeout=30,
                 what='every peer UP (health checks over http and https)')
        assert ns.http('http://127.0.0.1:8080/')[0] == 200 and ns.http('http://127.0.0.1:8080/api/x')[0] == 200
        assert ns.http('http://127.0.0.1:18080/metrics')[0] == 200
        for sig in (1, 10):                                       # HUP (reload), USR1 (reopen logs)
            os.kill(main, sig)
            wait_for(lambda: ns.http('http://127.0.0.1:8080/')[0] == 200, what='serving after %d' % sig)
        os.kill(main, 3)
        assert tracer.wait(timeout=60) == 0
    finally:
        ns.close()
    used = set()
    for trace in traces:
        for line in trace.read_text().splitlines():
            f = line.split()
            if len(f) >= 5 and re.match(r'^\d+\.\d+$', f[0]) and f[-1] != 'total':
                used.add(f[-1])
    assert {'epoll_wait', 'accept4', 'clone'} & used and len(used) > 30, used
    assert used <= allowed, sorted(used - allowed)


def test_tarball_top_has_the_readme_the_unit_documents():
    """Issue 28, item 7: the systemd unit's Documentation= names the README at the
    top of the unpacked tarball; the tarball (and the bundle) now has one."""
    unit = (DEPLOY / 'systemd' / 'nginx-portable.service').read_text()
    doc = re.search(r'^Documentation=file:///opt/nginx-portable/(\S+)$', unit, re.M)
    assert doc, unit
    readme = (BUNDLE / doc.group(1)).read_text()
    for what in ('/healthz', '/readyz', '/readyz/upstreams', '/metrics', 'sbin/nginx -t'):
        assert what in readme, what
    version = (ROOT / 'VERSION').read_text().strip()
    tarball = ROOT / 'dist' / ('nginx-portable-%s-linux-x86_64.tar.gz' % version)
    if not tarball.is_file():
        pytest.skip('no release tarball in dist/')
    with tarfile.open(tarball) as t:
        assert t.extractfile('nginx-portable/' + doc.group(1)).read().decode() == readme
