"""The bundle's own conf/nginx.conf -- the seed example with demo backends --
starts with `sbin/nginx -p <bundle>` alone and behaves as the README's tour says."""
import json
import re
import shutil

import pytest

from conftest import BUNDLE, ROOT, Nginx, copy_bundle, http_get, port_open, wait_for
from support.pki import PKI
from support.probes import peer_states, promtool

PROXY, METRICS, CONTROL = 8080, 18080, 18081
PEERS = ['127.0.1.11:8080', '127.0.1.12:8080', '127.0.2.11:8080', '127.0.2.12:8080']


def status():
    return peer_states(METRICS)


def metrics():
    return http_get('127.0.0.1', METRICS, '/metrics')[2].decode()


@pytest.fixture
def bundle_copy(tmp_path, own_network):
    """start() runs a copy of the bundle on its default config; in the test's
    own network namespace where possible, so its fixed ports are free."""
    if any(port_open('127.0.0.1', p) for p in (PROXY, METRICS, CONTROL)):
        pytest.skip('the default ports are taken on this machine')
    started = []

    def start(remove=None):
        dest = copy_bundle(tmp_path / 'bundle')
        if remove:
            (dest / remove).unlink()
        n = Nginx(dest)
        r = n.run()                                  # -p only: default conf/nginx.conf
        assert r.returncode == 0, r.stderr + n.error_log
        started.append(n)
        for port in (PROXY, METRICS, CONTROL):
            wait_for(lambda: port_open('127.0.0.1', port), what='port %d' % port)
        return n
    yield start
    for n in started:
        n.stop()
        assert 'exited on signal' not in n.error_log


def backend_of(path):
    status, headers, _ = http_get('127.0.0.1', PROXY, path)
    assert status == 200
    return headers.get('x-demo-backend')


def test_tour(bundle_copy, tmp_path):
    n = bundle_copy()
    wait_for(lambda: status() == dict.fromkeys(PEERS, 'UP'), timeout=15, what='all peers UP')
    assert {backend_of('/api/hello') for _ in range(6)} == {'127.0.1.11:8080', '127.0.1.12:8080'}
    assert {backend_of('/') for _ in range(6)} == {'127.0.2.11:8080', '127.0.2.12:8080'}

    text = metrics()
    ok, why = promtool(text)
    assert ok, why
    assert 'nginx_metrics_source_up{source="healthcheck_module"} 1' in text
    assert 'nginx_metrics_source_up{source="vts"} 1' in text
    assert re.search(r'nginx_vts_upstream_requests_total\{upstream="foo",backend="127.0.1.11:8080",code="2xx"\} [1-9]', text)

    st, headers, page = http_get('127.0.0.1', METRICS, '/traffic')
    assert st == 200 and headers['content-type'].startswith('text/html') and b'<html' in page.lower()

    # kill a demo backend: DOWN within fall(3) x interval(2s) + timeout(1s) + one interval
    assert http_get('127.0.0.1', CONTROL, '/demo/kill?backend=127.0.1.11:8080', method='POST')[0] == 200
    wait_for(lambda: status()['127.0.1.11:8080'] == 'DOWN', timeout=9 + 4, interval=0.2, what='DOWN')
    assert {backend_of('/api/x') for _ in range(6)} == {'127.0.1.12:8080'}
    assert ('nginx_upstream_status_info{name="foo",endpoint="127.0.1.11:8080",status="DOWN",'
            'role="PRIMARY"} 1') in metrics()
    assert 'peer 127.0.1.11:8080 is turned down' in n.error_log

    assert http_get('127.0.0.1', CONTROL, '/demo/revive?backend=127.0.1.11:8080', method='POST')[0] == 200
    wait_for(lambda: status()['127.0.1.11:8080'] == 'UP', timeout=2 * 2 + 1 + 4, interval=0.2, what='UP')
    ok, why = promtool(metrics())
    assert ok, why


def test_failed_checks_are_left_to_the_checker_to_log():
    """Issue 27, item 12: the checker logs a failed check itself (at most once
    per 10 s per peer); the default config had the sockets log their errors as
    well (lua_socket_log_errors on by default), a line per failed check."""
    conf = (BUNDLE / 'conf' / 'nginx.conf').read_text()
    http = conf.split('\nhttp {', 1)[1]
    assert re.search(r'^    lua_socket_log_errors off;$', http, re.M), http[:2000]


def test_metrics_without_the_healthcheck_module_stays_valid(bundle_copy, tmp_path):
    bundle_copy(remove='lualib/resty/upstream/healthcheck.lua')
    text = metrics()
    assert 'nginx_metrics_source_up{source="healthcheck_module"} 0' in text
    assert 'nginx_metrics_source_up{source="vts"} 1' in text
    assert re.search(r"^# healthcheck module unavailable: module 'resty.upstream.healthcheck' not found: ",
                     text, re.M)
    ok, why = promtool(text)
    assert ok, why


def curl(net, path, source='127.0.0.1', method='GET', port=METRICS):
    """(status, body) of a request sent inside net from the loopback address source."""
    r = net.run(['curl', '-s', '-o', '-', '-w', '\n%{http_code}', '--max-time', '5', '--interface', source,
                 *(['-I'] if method == 'HEAD' else []), 'http://127.0.0.1:%d%s' % (port, path)])
    body, _, code = r.stdout.rpartition('\n')
    return int(code or 0), body


def test_control_changes_data_only_from_this_host(own_network, tmp_path):
    """Issue 13, case 1: reset and delete answer 403 to other addresses
    (127.0.0.5 is not 127.0.0.1), whatever path reaches the control endpoint;
    HEAD never changes data; status stays readable."""
    net = own_network
    if net is None:
        pytest.skip('needs root and unshare for a network namespace')
    n = Nginx(copy_bundle(tmp_path / 'bundle'))
    r = net.run([n.binary, '-p', str(n.prefix) + '/'])
    assert r.returncode == 0, r.stderr + n.error_log
    try:
        wait_for(lambda: curl(net, '/traffic/format/json')[0] == 200, what='status port')

        def served():
            doc = json.loads(curl(net, '/traffic/format/json')[1])
            return sum(z['requestCounter'] for k, z in doc['serverZones'].items() if k != '*')
        for _ in range(5):
            curl(net, '/api/hello', port=PROXY)
        wait_for(lambda: served() >= 5, what='counted requests')
        before = served()
        for path in ('/traffic/control?cmd=delete&group=*', '/traffic/control?cmd=reset&group=server',
                     '/traffic/control/?cmd=delete&group=*', '/traffic/format/json/control?cmd=delete&group=*',
                     '/traffic/control?group=*&cmd=delete', '/traffic/control?cmd=delete&cmd=status&group=*'):
            st, body = curl(net, path, source='127.0.0.5')
            assert st == 403, (path, st, body[:200])
        st, _ = curl(net, '/traffic/control?cmd=delete&group=*', method='HEAD')
        assert st == 405
        assert served() >= before > 0
        st, body = curl(net, '/traffic/control?cmd=status&group=server', source='127.0.0.5')
        assert st == 200 and '"serverZones"' in body
        st, body = curl(net, '/traffic/control?cmd=delete&group=server')
        assert st == 200 and '"processingReturn":true' in body, body
        assert served() < before
    finally:
        n.stop()
    assert 'exited on signal' not in n.error_log


def test_monitoring_answers_this_host_and_the_allow_list_only(own_network, tmp_path):
    """Issue 26, item 11: a client on another host (another network namespace
    behind a veth link) gets 403 from every monitoring page while the proxy
    answers it; loopback (any 127.x address) is served; an address added to
    conf/monitoring-allow.conf is served after a reload, its neighbour not."""
    from support.namespaces import NetNS, link
    net = own_network
    if net is None:
        pytest.skip('needs root and unshare for network namespaces')
    n = Nginx(copy_bundle(tmp_path / 'bundle'))
    r = net.run([n.binary, '-p', str(n.prefix) + '/'])
    assert r.returncode == 0, r.stderr + n.error_log
    remote = NetNS()
    try:
        link(net, remote, '192.0.2.1', ['192.0.2.2', '192.0.2.3'])
        wait_for(lambda: curl(net, '/status')[0] == 200, what='status port')

        def from_remote(path, source='192.0.2.2', port=METRICS):
            r = remote.run(['curl', '-s', '-o', '-', '-w', '\n%{http_code}', '--max-time', '5',
                            '--interface', source, 'http://192.0.2.1:%d%s' % (port, path)])
            body, _, code = r.stdout.rpartition('\n')
            return int(code or 0), body
        wait_for(lambda: from_remote('/api/hello', port=PROXY)[0] == 200, what='the proxy from the remote host')
        pages = ('/metrics', '/status', '/traffic', '/traffic/health.json', '/traffic/format/json',
                 '/traffic/format/prometheus', '/traffic/control?cmd=status&group=server')
        for path in pages:
            assert from_remote(path)[0] == 403, path
            assert curl(net, path)[0] == 200, path
            assert curl(net, path, source='127.0.0.5')[0] == 200, path

        allow = n.prefix / 'conf' / 'monitoring-allow.conf'
        allow.write_text(allow.read_text().replace('deny all;', 'allow 192.0.2.2;\ndeny all;'))
        n.reload()
        wait_for(lambda: from_remote('/metrics')[0] == 200, what='the allowed address served')
        for path in pages:
            assert from_remote(path)[0] == 200, path
            assert from_remote(path, source='192.0.2.3')[0] == 403, path
        # data-changing control commands stay this host's
        assert from_remote('/traffic/control?cmd=delete&group=*')[0] == 403
    finally:
        remote.close()
        n.stop()
    assert 'exited on signal' not in n.error_log


def readme_steps(title='### From demo to real config'):
    """The numbered steps of a README section, each as one line of text."""
    section = (ROOT / 'README.md').read_text().split(title, 1)[1].split('\n#', 1)[0]
    return [' '.join(m.split()) for m in re.findall(r'^\d+\. (.*?)(?=^\d+\. |\Z)', section, re.M | re.S)]


def test_from_demo_to_real_config(own_network, backends, tmp_path):
    """Issue 27, item 11: a new user follows the README's "From demo to real
    config" with backends whose certificates come from a private CA.  Each
    step is done as its text says; step 3's trust directives are set where
    the config has them.  On the old config the checker's trust lived in
    conf/demo/demo.conf, which step 1 deletes, and step 3 led to setting
    proxy_ssl_trusted_certificate only: `-t` passed, every bar peer went DOWN
    and every request to / got 502."""
    if any(port_open('127.0.0.1', p) for p in (PROXY, METRICS)):
        pytest.skip('the default ports are taken on this machine')
    pki = PKI(tmp_path / 'pki')
    # not on 8080: nginx listens on *:8080
    foo = backends(2, port=28080)
    bar = backends(2, port=28443, tls=pki.server_context('bar.internal'))
    steps = readme_steps()
    assert len(steps) == 5, steps
    dest = copy_bundle(tmp_path / 'bundle')
    conf = dest / 'conf' / 'nginx.conf'
    n = Nginx(dest)

    # 1. delete the include line and conf/demo/
    assert '`include demo/demo.conf;`' in steps[0] and '`conf/demo/`' in steps[0], steps[0]
    text = conf.read_text()
    assert text.count('include demo/demo.conf;') == 1
    text = text.replace('include demo/demo.conf;', '')
    shutil.rmtree(dest / 'conf' / 'demo')
    # 2. point the upstreams at our servers (the checker options fit them as they are)
    assert '`upstream foo` / `upstream bar`' in steps[1], steps[1]
    for name, group in (('foo', foo), ('bar', bar)):
        servers = ''.join('        server %s;\n' % b.addr for b in group)
        text, k = re.subn(r'(upstream %s \{\n)(\s*server [^\n]*\n)+' % name, r'\g<1>' + servers, text)
        assert k == 1, name
    conf.write_text(text)
    r = n.run('-t')
    assert r.returncode != 0 and 'demo/ca.crt' in r.stderr, r.stderr      # step 3 is not optional
    # 3. our CA for every trust directive the step names, where the config has it
    ca = dest / 'conf' / 'our-ca.crt'
    shutil.copy(pki.ca_crt, ca)
    named = re.findall(r'`(\w+_trusted_certificate)`', steps[2])
    assert 'proxy_ssl_trusted_certificate' in named, steps[2]
    for directive in named:
        text = re.sub(r'^(\s*%s\s+)\S+;' % directive, r'\g<1>%s;' % ca, text, flags=re.M)
    conf.write_text(text)
    # 4. (Prometheus on this host: loopback is allowed already)
    assert 'conf/monitoring-allow.conf' in steps[3], steps[3]
    # 5. -t, then start
    assert '`sbin/nginx -p <bundle> -t`' in steps[4], steps[4]
    r = n.run('-t')
    assert r.returncode == 0, r.stderr
    r = n.run()
    assert r.returncode == 0, r.stderr + n.error_log
    try:
        wait_for(lambda: port_open('127.0.0.1', METRICS), what='the monitoring port')

        def checked():
            doc = json.loads(http_get('127.0.0.1', METRICS, '/traffic/health.json')[2])
            peers = [p for u in doc['upstreams'].values() for p in u['peers']]
            return len(peers) == 4 and all(p['checks'] for p in peers) and peers
        # every peer checked once (bar's interval is 5 s), and none failed: on the
        # old config every bar check failed ("certificate verify failed")
        for p in wait_for(checked, timeout=20, what='every peer checked'):
            assert p['state'] == 'UP' and p['last_failure'] is None, p
        assert status() == {b.addr: 'UP' for b in foo + bar}
        for path, group in (('/', bar), ('/api/x', foo)):
            for _ in range(4):
                st, _, body = http_get('127.0.0.1', PROXY, path)
                assert st == 200 and body.decode() in {b.name for b in group}, (path, st, body)
        assert 'verify' not in n.error_log, n.error_log[-3000:]
    finally:
        n.stop()
