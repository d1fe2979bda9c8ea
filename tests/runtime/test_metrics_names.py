"""Issue 28, items 3, 4, 6: the names people already chart.  The default
config's /metrics answers the official nginx-prometheus-exporter dashboard,
/traffic/format/vts-exporter answers nginx-vts-exporter's, histogram buckets
are on (and what they add per peer), and the merged page is one library call
that keeps working when a source is missing.  The dashboards' queries are
test data below, copied from their sources (named beside each list)."""
import re

from conftest import http_get, wait_for
from support.probes import promtool
from support.promql import parse, unanswered, values
from test_default_config import METRICS, PROXY, bundle_copy  # noqa: F401 (fixture)

# nginxinc/nginx-prometheus-exporter, grafana/dashboard.json ("NGINX",
# "Official dashboard for NGINX Prometheus exporter"): its 9 queries, the
# template variable's included.
NGINX_EXPORTER_DASHBOARD = [
    'label_values(nginx_up, instance)',
    'nginx_up{instance=~"$instance"}',
    'irate(nginx_connections_accepted{instance=~"$instance"}[5m])',
    'irate(nginx_connections_handled{instance=~"$instance"}[5m])',
    'nginx_connections_active{instance=~"$instance"}',
    'nginx_connections_reading{instance=~"$instance"}',
    'nginx_connections_waiting{instance=~"$instance"}',
    'nginx_connections_writing{instance=~"$instance"}',
    'irate(nginx_http_requests_total{instance=~"$instance"}[5m])',
]

# sysulq (formerly hnlq715)/nginx-vts-exporter, dashboard/nginx-vts-exporter.json
# ("Nginx VTS Stats", "Show stats from the hnlq715/nginx-vts-exporter"; the
# exporter's README points to it as grafana.com dashboard 2949): its two
# template variables and seven panel queries.  The last one reads
# nginx_upstream_response in that file; the exporter renamed the family
# nginx_upstream_responseMsec (its README and source), the name used here.
VTS_EXPORTER_DASHBOARD = [
    'label_values(nginx_server_bytes, host)',
    'label_values(nginx_upstream_bytes, upstream)',
    'nginx_server_connections{status=~"active|writing|reading|waiting"}',
    'sum(irate(nginx_server_cache{host=~"^$Host$"}[5m])) by (status)',
    'sum(irate(nginx_server_requests{code!="total"}[5m])) by (code)',
    'sum(irate(nginx_server_bytes{host=~"^$Host$"}[5m])) by (direction)',
    'sum(irate(nginx_upstream_requests{upstream=~"^$Upstream$",code!="total"}[5m])) by (code)',
    'sum(irate(nginx_upstream_bytes{upstream=~"^$Upstream$"}[5m])) by (direction)',
    'sum(nginx_upstream_responseMsec{upstream=~"^$Upstream$"}) by (backend)',
]

# nginx-vts-exporter's nginx_vts_exporter.go, NewExporter(): every family with
# its label names (the namespace "nginx"), for queries of dashboards copied
# from 2949 beyond the ones above.
VTS_EXPORTER_FAMILIES = {
    'nginx_server_info': {'hostName', 'nginxVersion'},
    'nginx_server_connections': {'status'},
    'nginx_server_requests': {'host', 'code'},
    'nginx_server_bytes': {'host', 'direction'},
    'nginx_server_cache': {'host', 'status'},
    'nginx_server_requestMsec': {'host'},
    'nginx_upstream_requests': {'upstream', 'code', 'backend'},
    'nginx_upstream_bytes': {'upstream', 'direction'},
    'nginx_upstream_responseMsec': {'upstream', 'backend'},
    'nginx_upstream_requestMsec': {'upstream', 'backend'},
    'nginx_filter_requests': {'filter', 'filterName', 'code'},
    'nginx_filter_bytes': {'filter', 'filterName', 'direction'},
    'nginx_filter_responseMsec': {'filter', 'filterName'},
    'nginx_filter_requestMsec': {'filter', 'filterName'},
    'nginx_cache_requests': {'zone', 'status'},
    'nginx_cache_bytes': {'zone', 'direction'},
}

# Grafana's "All" for the dashboards' template variables
ALL = {'instance': '.*', 'Host': '.*', 'Upstream': '.*'}

PEER = '127.0.1.11:8080'
BUCKETS = 8          # conf/nginx.conf: vhost_traffic_status_histogram_buckets


def scrape(path):
    st, headers, body = http_get('127.0.0.1', METRICS, path)
    assert st == 200, (path, st, body[:300])
    return headers, body.decode()


def scrape_when(path, ready, what):
    """(headers, text) of the first scrape whose parse satisfies ready: a
    request is counted in its log phase, after its response was sent."""
    got = []

    def ok():
        got[:] = scrape(path)
        return ready(parse(got[1]))
    wait_for(ok, timeout=10, interval=0.1, what=what)
    return got[0], got[1]


def traffic(n):
    for i in range(n):
        assert http_get('127.0.0.1', PROXY, '/api/hello')[0] == 200
        assert http_get('127.0.0.1', PROXY, '/')[0] == 200


def assert_only_camel_case_lint(text):
    """promtool parses the page and lints nothing but the names the
    dashboards need (camelCase: *Msec, hostName, nginxVersion, filterName);
    the counters without _total are untyped."""
    ok, why = promtool(text)
    problems = [line for line in why.splitlines() if line.strip()]
    assert not ok and problems, why
    for line in problems:
        assert re.fullmatch(r"(nginx_(server|upstream|filter)_(request|response)Msec metric"
                            r"|nginx_server_info label|nginx_filter_\w+ label) names "
                            r"should be written in 'snake_case' not 'camelCase'", line), why


def test_default_metrics_answer_the_nginx_exporter_dashboard(bundle_copy):  # noqa: F811
    bundle_copy()
    wait_for(lambda: 'nginx_upstream_status_info{name="foo",endpoint="%s",status="UP"' % PEER
             in scrape('/metrics')[1], timeout=15, what='foo checked')
    traffic(5)
    headers, text = scrape('/metrics')
    assert headers['content-type'].startswith('text/plain'), headers
    ok, why = promtool(text)
    assert ok, why
    m = parse(text)
    assert unanswered(NGINX_EXPORTER_DASHBOARD, m, ALL) == []
    assert values(m, 'nginx_up') == [1]
    assert m['types']['nginx_http_requests_total'] == 'counter'
    accepted, = values(m, 'nginx_connections_accepted')
    handled, = values(m, 'nginx_connections_handled')
    requests, = values(m, 'nginx_http_requests_total')
    assert accepted >= handled >= 1 and requests >= 10, (accepted, handled, requests)
    assert values(m, 'nginx_connections_active')[0] >= 1     # this scrape's
    assert values(m, 'nginx_metrics_source_up', source='vts') == [1]
    assert values(m, 'nginx_metrics_source_up', source='healthcheck_module') == [1]


def test_default_config_has_histogram_buckets(bundle_copy):  # noqa: F811
    """Item 4: the latency panels' histograms, and what they add per peer
    (bench/RESULTS.md, issue 28, gives the whole count and the cost)."""
    bundle_copy()
    traffic(5)
    _, text = scrape_when('/metrics', lambda m: values(
        m, 'nginx_vts_server_request_duration_seconds_count', host='*') >= [10], 'the 10 counted')
    m = parse(text)
    bucket = values(m, 'nginx_vts_upstream_request_duration_seconds_bucket',
                    upstream='foo', backend=PEER, le='+Inf')
    assert bucket and bucket[0] >= 1, bucket
    assert values(m, 'nginx_vts_server_request_duration_seconds_count', host='*')[0] >= 10
    vts_series = [n for n, l, _ in m['series'] if n.startswith('nginx_vts_upstream_')
                  and l.get('backend') == PEER]
    hist = [n for n in vts_series if '_duration_seconds_' in n]
    assert len(hist) == 2 * (BUCKETS + 3), hist                # +Inf, _sum, _count
    assert len(vts_series) == 14 + len(hist), sorted(set(vts_series))


def test_vts_exporter_format_answers_its_dashboard(bundle_copy):  # noqa: F811
    bundle_copy()
    traffic(5)
    headers, text = scrape_when('/traffic/format/vts-exporter', lambda m: sum(values(
        m, 'nginx_upstream_requests', code='2xx')) >= 10, 'the 10 counted')
    assert headers['content-type'].startswith('text/plain; version=0.0.4'), headers
    m = parse(text)
    assert unanswered(VTS_EXPORTER_DASHBOARD, m, ALL) == []
    labels = {}
    for name, l, _ in m['series']:
        labels.setdefault(name, set(l))
        assert labels[name] == set(l), (name, l)
    # (no filter, no cache in the default config: the library's test has them)
    expected = {k: v for k, v in VTS_EXPORTER_FAMILIES.items()
                if not k.startswith(('nginx_filter_', 'nginx_cache_'))}
    assert labels == expected

    # the values: as the exporter computed them from VTS's JSON
    total = values(m, 'nginx_server_requests', host='*', code='total')[0]
    assert total >= 10 and total == sum(values(m, 'nginx_server_requests', host='*')) - total
    foo = values(m, 'nginx_upstream_requests', upstream='foo', code='2xx')
    assert len(foo) == 2 and sum(foo) == 5, foo
    assert values(m, 'nginx_upstream_bytes', upstream='foo', direction='out')[0] > 0
    assert values(m, 'nginx_server_connections', status='accepted')[0] >= 1

    assert_only_camel_case_lint(text)


LIBRARY_CONF = '''
    lua_shared_dict healthcheck 1m;
    vhost_traffic_status_zone;
    vhost_traffic_status_filter_by_set_key $request_method method;
    vhost_traffic_status_filter_by_set_key $http_x_key hostile;
    proxy_cache_path cache keys_zone=pages:1m;
    upstream u { server 127.0.0.1:1; }
    server {
        listen 127.0.0.1:%(port)d;
        location = /exporter {
            vhost_traffic_status_display;
            vhost_traffic_status_display_format vts-exporter;
        }
        location = /status/format/prometheus {
            internal;
            vhost_traffic_status_display;
            vhost_traffic_status_display_format prometheus;
        }
        location = /metrics {
            content_by_lua_block { require("resty.upstream.metrics").serve() }
        }
        location = /metrics-no-vts {
            content_by_lua_block {
                require("resty.upstream.metrics").serve({ vts_uri = "/nowhere" })
            }
        }
        location = /metrics-basic {
            content_by_lua_block {
                local metrics = require "resty.upstream.metrics"
                ngx.print(metrics.page({ extended = false, stub = false }))
            }
        }
    }
'''


def test_merged_page_is_one_library_call(nginx_factory):
    from support.confs import conf_wrap
    from conftest import free_port
    port = free_port()
    nginx_factory(conf_wrap(LIBRARY_CONF % {'port': port}), wait_ports=[('127.0.0.1', port)])

    def get(path):
        st, _, body = http_get('127.0.0.1', port, path)
        assert st == 200, (path, st, body[:300])
        text = body.decode()
        ok, why = promtool(text)
        assert ok, (path, why)
        return text, parse(text)

    text, m = get('/metrics')
    assert values(m, 'nginx_metrics_source_up', source='vts') == [1]
    assert values(m, 'nginx_metrics_source_up', source='healthcheck_module') == [1]
    assert values(m, 'nginx_up') == [1] and values(m, 'nginx_http_requests_total')[0] >= 1
    assert values(m, 'nginx_vts_info') == [1] and len(values(m, 'nginx_portable_build_info')) == 1

    text, m = get('/metrics-no-vts')
    assert values(m, 'nginx_metrics_source_up', source='vts') == [0]
    assert values(m, 'nginx_up') == [0] and not values(m, 'nginx_connections_active')
    assert '# vts metrics unavailable: status=404' in text

    text, m = get('/metrics-basic')
    assert not values(m, 'nginx_up') and values(m, 'nginx_metrics_source_up', source='vts') == [1]

    # the filter families of the exporter's format (the format chosen by the
    # directive here), their label sets as the exporter's source has them;
    # a client's bytes in a label value stay valid text
    hostile = b'a"b\\c\x01\xff{}=,z'
    assert http_get('127.0.0.1', port, '/metrics', headers={'X-Key': hostile})[0] == 200
    st, headers, body = http_get('127.0.0.1', port, '/exporter')
    assert_only_camel_case_lint(body)
    assert st == 200 and headers['content-type'].startswith('text/plain; version=0.0.4'), headers
    m = parse(body.decode())
    more = {n: set(l) for n, l, _ in m['series'] if n.startswith(('nginx_filter_', 'nginx_cache_'))}
    assert more == {k: v for k, v in VTS_EXPORTER_FAMILIES.items()
                    if k.startswith(('nginx_filter_', 'nginx_cache_'))}
    assert values(m, 'nginx_cache_requests', zone='pages', status='hit') == [0]
    assert values(m, 'nginx_filter_requests', filter='method', filterName='GET',
                  code='total')[0] >= 3
    assert len(values(m, 'nginx_filter_requests', filter='hostile', code='total')) == 1
