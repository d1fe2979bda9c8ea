"""Issue 28, items 1 and 2 against a live scrape: a real Prometheus (Debian's)
scrapes the bundle's default config on loopback while clients send traffic
and one demo backend is killed; every query of the Grafana dashboard returns
data, every alert rule evaluates without error, and the peer-DOWN alert fires
for the killed peer (its `for:` shortened in a copy of the rules)."""
import re
import threading
import time

import pytest
import yaml

from conftest import Nginx, copy_bundle, http_get, port_open, wait_for
from promutil import (RULES, dashboard, dashboard_variables, panel_queries, prometheus_factory,  # noqa: F401
                      substitute)

PROXY, METRICS, CONTROL = 8080, 18080, 18081
KILLED = '127.0.1.11:8080'
# Latency panels read the traffic-status histograms: on in this copy of the
# config if the default config does not turn them on yet.
BUCKETS = 'vhost_traffic_status_histogram_buckets 0.005 0.01 0.05 0.1 0.5 1 5;'


def start_default_bundle(tmp_path):
    bundle = copy_bundle(tmp_path / 'bundle')
    conf = bundle / 'conf' / 'nginx.conf'
    text = conf.read_text()
    if 'vhost_traffic_status_histogram_buckets' not in text:
        text, n = re.subn(r'^(\s*)(vhost_traffic_status_zone .*)$', r'\1\2\n\1' + BUCKETS, text, count=1,
                          flags=re.M)
        assert n == 1
        conf.write_text(text)
    n = Nginx(bundle)
    r = n.run()
    assert r.returncode == 0, r.stderr + n.error_log
    for port in (PROXY, METRICS, CONTROL):
        wait_for(lambda: port_open('127.0.0.1', port), what='port %d' % port)
    return n


def traffic(stop):
    """Clients of both upstreams, and of a path the demo answers 404, until stop."""
    paths = ['/api/hello', '/', '/api/hello', '/no-such-page']
    i = 0
    while not stop.is_set():
        try:
            http_get('127.0.0.1', PROXY, paths[i % len(paths)], timeout=2)
        except OSError:
            pass
        i += 1
        time.sleep(0.01)


def short_rules(tmp_path):
    """The shipped rules with every `for:` at 2 s, so the test sees alerts fire."""
    text = re.sub(r'^(\s*)for: \S+$', r'\1for: 2s', RULES.read_text(), flags=re.M)
    path = tmp_path / 'alerts-short-for.yml'
    path.write_text(text)
    return path


def missing_after(deadline_s, probe):
    """Poll probe() (a list of what is still missing) until it is empty or the
    deadline passes; the last list."""
    deadline = time.monotonic() + deadline_s
    while True:
        missing = probe()
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(1)


def has_numbers(result):
    """Some series of an instant query's result has a number (not NaN: a
    histogram_quantile over buckets that did not grow gives NaN)."""
    return any(r['value'][1] != 'NaN' for r in result)


def label_values_missing(prom, dash):
    """Template variables whose label_values() query finds no value."""
    missing = []
    values = dashboard_variables(dash)
    for v in dash['templating']['list']:
        if v['type'] != 'query':
            continue
        m = re.fullmatch(r'label_values\((.*),\s*(\w+)\)', v['query'])
        assert m, v['query']
        series = prom.api('series', **{'match[]': substitute(m.group(1), values)})
        if not any(m.group(2) in s for s in series):
            missing.append(v['name'])
    return missing


def test_dashboard_queries_and_alert_rules_on_a_live_scrape(own_network, tmp_path, prometheus_factory):
    if any(port_open('127.0.0.1', p) for p in (PROXY, METRICS, CONTROL)):
        pytest.skip('the default ports are taken on this machine')
    n = start_default_bundle(tmp_path)
    stop = threading.Event()
    clients = threading.Thread(target=traffic, args=(stop,), daemon=True)
    clients.start()
    prom = None
    try:
        assert http_get('127.0.0.1', CONTROL, '/demo/kill?backend=' + KILLED, method='POST')[0] == 200
        rules_file = short_rules(tmp_path)
        prom = prometheus_factory(['127.0.0.1:%d' % METRICS], [rules_file])
        wait_for(lambda: prom.query('nginx_upstream_status_info{endpoint="%s",status="DOWN"} == 1' % KILLED),
                 timeout=40, interval=0.5, what='the killed peer DOWN in Prometheus')

        dash = dashboard()
        values = dashboard_variables(dash)
        queries = [(title, ref, substitute(expr, values)) for title, ref, expr in panel_queries(dash)]
        assert len(queries) >= 20
        for _, _, expr in queries:
            assert '$' not in expr and '[[' not in expr, expr
        empty = missing_after(40, lambda: ['%s/%s: %s' % q for q in queries if not has_numbers(prom.query(q[2]))])
        print('dashboard: %d of %d queries returned data' % (len(queries) - len(empty), len(queries)))
        assert not empty, 'queries without data:\n' + '\n'.join(empty)
        assert not label_values_missing(prom, dash)

        shipped = [r['alert'] for g in yaml.safe_load(RULES.read_text())['groups'] for r in g['rules']]
        bad = missing_after(20, lambda: ['%s: %s %s' % (r['name'], r['health'], r.get('lastError', ''))
                                         for r in prom.rules() if r['health'] != 'ok'] or
                            ([] if len(prom.rules()) == len(shipped) else ['rules not all loaded']))
        rules = prom.rules()
        print('alert rules: %d of %d evaluated ok' % (sum(r['health'] == 'ok' for r in rules), len(shipped)))
        assert not bad, bad
        assert sorted(r['name'] for r in rules) == sorted(shipped)

        def firing(name):
            return [a['labels'] for a in prom.api('alerts')['alerts']
                    if a['labels']['alertname'] == name and a['state'] == 'firing']
        down = wait_for(lambda: firing('NginxUpstreamPeerDown'), timeout=30, interval=0.5, what='peer DOWN alert')
        assert [(a['name'], a['endpoint']) for a in down] == [('foo', KILLED)]
        # foo keeps a live peer, and both sources and the scrape are fine
        for quiet in ('NginxUpstreamAllPeersDown', 'NginxMetricsTargetDown', 'NginxMetricsSourceDown'):
            assert not firing(quiet), quiet
    finally:
        stop.set()
        clients.join(timeout=10)
        n.stop()
        if prom:
            prom.stop()
