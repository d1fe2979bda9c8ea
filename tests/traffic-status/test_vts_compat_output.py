"""traffic-status, issue 14: the outputs of VTS v0.2.7 (Prometheus without
code="total", filters labelled `code`, JSON overCounts, sharedZones.freeSize,
used_size as node bytes, cumulative JSON histograms, upstream responses
without cache keys, the default zone name, measure_status_codes)."""
import re

import pytest

from conftest import conf_wrap, free_port, wait_for
from support.net import raw_request
from support.probes import promtool
from vts_util import assert_nginx_t_fails, backend_conf, get, get_json, keepalive_requests, req

CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx']
CACHE = ['miss', 'bypass', 'expired', 'stale', 'updating', 'revalidated', 'hit', 'scarce']


def front(fport, sport, bport, http_extra='', zone='vhost_traffic_status_zone;'):
    return conf_wrap(f"""
    {zone}
    {http_extra}
    vhost_traffic_status_filter_by_set_key $uri uris::$server_name;
    vhost_traffic_status_histogram_buckets 0.25 5 30;
    upstream grp {{ server 127.0.0.1:{bport}; }}
    server {{
        listen 127.0.0.1:{fport};
        server_name a.test;
        chunked_transfer_encoding off;    # Lua answers: length by closing (keepalive_requests)
        location / {{ return 200 "ok\\n"; }}
        location /missing {{ return 404; }}
        location /moved {{ return 301 /; }}
        location /up/ {{ proxy_pass http://grp/; }}
        location /slow {{ content_by_lua_block {{ ngx.sleep(0.5) ngx.say("s") }} }}
    }}
    server {{
        listen 127.0.0.1:{sport};
        server_name status.test;
        vhost_traffic_status off;
        location /status {{ vhost_traffic_status_display; }}
    }}
""")


@pytest.fixture
def stack(nginx_factory):
    fport, sport, bport = free_port(), free_port(), free_port()
    nginx_factory(backend_conf([bport]), name='backend', wait_ports=[('127.0.0.1', bport)])

    def start(http_extra='', zone='vhost_traffic_status_zone;'):
        return nginx_factory(front(fport, sport, bport, http_extra, zone),
                             wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    return start, fport, sport


def prometheus(sport):
    st, _, body = get(sport, '/status/format/prometheus')
    assert st == 200
    text = body.decode()
    ok, out = promtool(text)
    assert ok, out[:2000]
    return text


def series(text, family):
    """{labels-text: value} of one family's samples."""
    out = {}
    for m in re.finditer(r'^%s\{([^}]*)\} (\S+)$' % re.escape(family), text, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def send(fport, paths):
    return keepalive_requests(fport, [req(p, host='a.test').replace(b'Connection: close\r\n', b'')
                                      for p in paths])


def test_prometheus_code_label_sums_to_the_requests(stack):
    start, fport, sport = stack
    start()
    paths = ['/'] * 5 + ['/missing'] * 3 + ['/moved'] * 2 + ['/up/x'] * 4
    assert send(fport, paths) == 14
    text = prometheus(sport)
    assert 'code="total"' not in text
    assert 'direction="1xx"' not in text and 'direction="2xx"' not in text
    srv = series(text, 'nginx_vts_server_requests_total')
    by_host = {}
    for labels, v in srv.items():
        host = re.search(r'host="([^"]*)"', labels).group(1)
        assert re.search(r'code="[1-5]xx"', labels), labels
        by_host[host] = by_host.get(host, 0) + v
    assert by_host == {'a.test': 14, '*': 14}
    assert srv['host="a.test",code="2xx"'] == 9
    assert srv['host="a.test",code="4xx"'] == 3
    assert srv['host="a.test",code="3xx"'] == 2
    flt = series(text, 'nginx_vts_filter_requests_total')
    assert flt['filter="uris::a.test",filter_name="/missing",code="4xx"'] == 3
    assert sum(v for k, v in flt.items() if 'filter_name="/"' in k) == 5
    assert all(re.search(r'code="[1-5]xx"$', k) for k in flt), flt
    up = series(text, 'nginx_vts_upstream_requests_total')
    assert sum(up.values()) == 4
    assert 'nginx_vts_filter_bytes_total{filter="uris::a.test",filter_name="/",direction="in"}' in text


def test_shm_usage_counts_node_bytes_and_free_size(stack):
    start, fport, sport = stack
    start()
    send(fport, ['/'])
    # a.test + one filter entry + the configured peer of `grp` (its entry
    # comes from worker 0's first sweep, before any request reaches it)
    doc1 = wait_for(lambda: (lambda d: d if d['sharedZones']['usedNode'] == 3 else None)(
        get_json(sport)), timeout=10, what='three entries')
    text = prometheus(sport)
    shm = series(text, 'nginx_vts_main_shm_usage_bytes')
    sz = doc1['sharedZones']
    assert set(sz) == {'name', 'maxSize', 'usedSize', 'usedNode', 'freeSize', 'droppedNodes'}
    assert sz['name'] == 'ngx_http_vhost_traffic_status' and sz['maxSize'] == 1048576
    assert shm['shared="max_size"'] == 1048576
    assert shm['shared="used_node"'] == sz['usedNode'] == 3
    # node bytes: three nodes, a few KB each, no fixed slab overhead
    assert 3 * 2048 < sz['usedSize'] < 3 * 8192, sz
    assert sz['freeSize'] + sz['usedSize'] < sz['maxSize']
    assert sz['freeSize'] > sz['maxSize'] // 2
    assert 'shared="free_size"' in ''.join(shm)
    send(fport, ['/another'])
    sz2 = get_json(sport)['sharedZones']
    one_node = sz2['usedSize'] - sz['usedSize']
    assert 2048 < one_node < 8192
    assert sz2['freeSize'] == sz['freeSize'] - 4096           # one page per entry
    assert sz2['droppedNodes'] == {'zoneFull': 0, 'maxNode': 0, 'evicted': 0}


def test_json_overcounts_cumulative_buckets_and_peer_responses(stack):
    start, fport, sport = stack
    start()
    assert send(fport, ['/'] * 3 + ['/slow'] * 2 + ['/up/a'] * 2) == 7
    doc = get_json(sport)
    a = doc['serverZones']['a.test']
    assert a['requestBuckets']['msecs'] == [250, 5000, 30000]
    # cumulative: each bound counts every request at or under it (the two slow
    # ones take 0.5 s; the fast ones should take under 0.25 s even on a busy machine)
    fast = a['requestBuckets']['counters'][0]
    assert 3 <= fast <= 5
    assert a['requestBuckets']['counters'] == [fast, 7, 7], a
    assert list(a['responses']) == CLASSES + CACHE
    oc = a['overCounts']
    assert list(oc) == ['maxIntegerSize', 'requestCounter', 'inBytes', 'outBytes'] + CLASSES \
        + CACHE + ['requestMsecCounter']
    assert oc['maxIntegerSize'] == 18446744073709551615
    assert all(v == 0 for k, v in oc.items() if k != 'maxIntegerSize')
    assert doc['serverZones']['*']['overCounts']['requestCounter'] == 0
    flt = doc['filterZones']['uris::a.test']['/slow']
    assert flt['requestBuckets']['counters'] == [0, 2, 2]
    assert 'overCounts' in flt
    (peer,) = doc['upstreamZones']['grp']
    assert list(peer['responses']) == CLASSES
    assert peer['responses']['2xx'] == 2
    assert peer['responseBuckets']['counters'][-1] == 2
    assert 'responseMsecCounter' in peer['overCounts']
    assert 'miss' not in peer['overCounts']
    assert doc['moduleVersion'].startswith('v0.2.7')
    # Prometheus histograms are cumulative too, the same figures
    text = prometheus(sport)
    b = series(text, 'nginx_vts_server_request_duration_seconds_bucket')
    assert b['host="a.test",le="0.250"'] == fast and b['host="a.test",le="5.000"'] == 7
    assert b['host="a.test",le="+Inf"'] == 7


def test_named_zone_keeps_its_name(stack):
    start, fport, sport = stack
    start(zone='vhost_traffic_status_zone shared:mine:2m;')
    assert get_json(sport)['sharedZones']['name'] == 'mine'
    assert get_json(sport)['sharedZones']['maxSize'] == 2 * 1048576


def test_measure_status_codes_listed(stack):
    start, fport, sport = stack
    start('vhost_traffic_status_measure_status_codes 200 301 404 503;')
    assert send(fport, ['/'] * 4 + ['/missing'] * 2 + ['/moved', '/up/x']) == 8
    doc = get_json(sport)
    codes = doc['serverZones']['a.test']['statusCodes']
    assert codes == {'other': 0, '200': 5, '301': 1, '404': 2, '503': 0}
    assert doc['serverZones']['*']['statusCodes'] == codes
    text = prometheus(sport)
    sc = series(text, 'nginx_vts_status_code_requests_total')
    assert sc == {'host="a.test",code="other"': 0, 'host="a.test",code="200"': 5,
                  'host="a.test",code="301"': 1, 'host="a.test",code="404"': 2,
                  'host="a.test",code="503"': 0}
    assert '# TYPE nginx_vts_status_code_requests_total counter' in text


def test_measure_status_codes_all_shows_codes_seen(stack):
    start, fport, sport = stack
    start('vhost_traffic_status_measure_status_codes all;')
    raw_request(fport, req('/missing', host='a.test'))
    raw_request(fport, req('/', host='a.test'))
    raw_request(fport, req('/', host='a.test'))
    codes = get_json(sport)['serverZones']['a.test']['statusCodes']
    assert codes == {'other': 0, '200': 2, '404': 1}


def test_no_status_codes_without_the_directive(stack):
    start, fport, sport = stack
    start()
    send(fport, ['/'])
    assert 'statusCodes' not in get_json(sport)['serverZones']['a.test']
    assert 'nginx_vts_status_code_requests_total' not in prometheus(sport)


@pytest.mark.parametrize('args,message', [
    ('150 100', 'invalid status code "100"'),
    ('99', 'invalid status code "99"'),
    ('600', 'invalid status code "600"'),
    ('all 200', 'invalid status code "all"'),
])
def test_measure_status_codes_invalid(nginx_factory, args, message):
    assert_nginx_t_fails(nginx_factory, 'vhost_traffic_status_measure_status_codes %s;' % args, message)
