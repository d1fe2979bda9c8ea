"""traffic-status: directives, exact counts, outputs (JSON, Prometheus) through
the real bundle."""
import re

import pytest

from conftest import conf_wrap, free_port, wait_for, http_get
from support.net import raw_request
from support.probes import parse_json, promtool
from vts_util import backend_conf, get, get_json, keepalive_requests, req, status_of
from support.lock import locked_version


def front_conf(fport, sport, bports, extra_http='', extra_server='', zone='shared:vts:4m'):
    b0, b1, b2, b3 = bports
    return conf_wrap(f"""
    vhost_traffic_status_zone {zone};
    {extra_http}
    upstream grp {{
        server 127.0.0.1:{b0};
        server 127.0.0.1:{b1} weight=1 max_fails=3 fail_timeout=7s;
        server 127.0.0.1:{b2} down;
        server 127.0.0.1:{b3} backup;
    }}
    server {{
        listen 127.0.0.1:{fport};
        server_name counted.test;
        {extra_server}
        location = /ok {{ return 200 "hello\\n"; }}
        location = /nf {{ return 404; }}
        location = /err {{ return 500; }}
        location = /redir {{ return 302 /ok; }}
        location = /bypass {{ vhost_traffic_status_bypass_stats on; return 200 "b\\n"; }}
        location = /off {{ vhost_traffic_status off; return 200 "o\\n"; }}
        location /up/ {{ proxy_pass http://grp; }}
        location /bare/ {{ proxy_pass http://127.0.0.1:{b0}; }}
    }}
    server {{
        listen 127.0.0.1:{sport};
        server_name status.test;
        vhost_traffic_status off;
        location /status {{
            vhost_traffic_status_display;
            vhost_traffic_status_display_format json;
        }}
    }}
""")


@pytest.fixture
def stack(nginx_factory):
    bports = [free_port() for _ in range(4)]
    nginx_factory(backend_conf(bports), name='backend',
                  wait_ports=[('127.0.0.1', p) for p in bports])
    fport, sport = free_port(), free_port()

    def start(**kw):
        n = nginx_factory(front_conf(fport, sport, bports, **kw), name='front',
                          wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
        return n
    return start, fport, sport, bports


def test_counts_by_class_and_bytes_are_exact(stack):
    start, fport, sport, _ = stack
    start()
    seq = ['/ok', '/ok', '/ok', '/nf', '/nf', '/err', '/redir', '/bypass', '/off']
    in_bytes = out_bytes = 0
    for path in seq:
        raw = req(path, extra=b'X-Pad: ' + b'p' * len(path) * 3 + b'\r\n')
        resp = raw_request(fport, raw)
        if path not in ('/bypass', '/off'):
            in_bytes += len(raw)
            out_bytes += len(resp)
    doc = get_json(sport)
    z = doc['serverZones']['counted.test']
    assert z['requestCounter'] == 7
    r = z['responses']
    assert (r['1xx'], r['2xx'], r['3xx'], r['4xx'], r['5xx']) == (0, 3, 1, 2, 1)
    assert z['inBytes'] == in_bytes
    assert z['outBytes'] == out_bytes
    # the sum key covers every server zone
    s = doc['serverZones']['*']
    assert s['requestCounter'] == 7 and s['inBytes'] == in_bytes
    assert s['outBytes'] == out_bytes
    # the status server has counting off: it never shows up
    assert 'status.test' not in doc['serverZones']


def test_json_has_the_spec_fields(stack):
    start, fport, sport, _ = stack
    start()
    raw_request(fport, req('/ok'))
    raw_request(fport, req('/up/x'))
    doc = get_json(sport)
    for k in ('hostName', 'moduleVersion', 'nginxVersion', 'loadMsec', 'nowMsec',
              'connections', 'sharedZones', 'serverZones', 'filterZones',
              'upstreamZones', 'cacheZones'):
        assert k in doc, k
    assert set(doc['connections']) >= {'active', 'reading', 'writing', 'waiting',
                                       'accepted', 'handled', 'requests'}
    assert doc['connections']['accepted'] >= 3
    sz = doc['sharedZones']
    assert sz['name'] == 'vts' and sz['maxSize'] == 4 * 1024 * 1024
    assert 0 < sz['usedSize'] <= sz['maxSize'] and sz['usedNode'] >= 2
    z = doc['serverZones']['counted.test']
    for k in ('requestCounter', 'inBytes', 'outBytes', 'responses',
              'requestMsecCounter', 'requestMsec', 'requestMsecs', 'requestBuckets'):
        assert k in z, k
    assert set(z['responses']) == {'1xx', '2xx', '3xx', '4xx', '5xx', 'miss', 'bypass',
                                   'expired', 'stale', 'updating', 'revalidated',
                                   'hit', 'scarce'}
    assert len(z['requestMsecs']['times']) == len(z['requestMsecs']['msecs']) == 2
    peer = doc['upstreamZones']['grp'][0]
    for k in ('server', 'requestCounter', 'inBytes', 'outBytes', 'responses',
              'requestMsecCounter', 'requestMsec', 'requestMsecs', 'requestBuckets',
              'responseMsecCounter', 'responseMsec', 'responseMsecs',
              'responseBuckets', 'weight', 'maxFails', 'failTimeout', 'backup', 'down'):
        assert k in peer, k


def test_upstream_per_peer_with_down_and_backup(stack):
    start, fport, sport, bports = stack
    start()
    bodies = [raw_request(fport, req('/up/x')).split(b'\r\n\r\n', 1)[1] for _ in range(6)]
    assert bodies.count(b'backend0\n') == 3 and bodies.count(b'backend1\n') == 3
    for _ in range(2):
        raw_request(fport, req('/bare/y'))
    doc = get_json(sport)
    peers = {p['server']: p for p in doc['upstreamZones']['grp']}
    assert list(peers) == ['127.0.0.1:%d' % p for p in bports]   # config order
    p0, p1, p2, p3 = (peers['127.0.0.1:%d' % p] for p in bports)
    assert p0['requestCounter'] == 3 and p1['requestCounter'] == 3
    assert p0['responses']['2xx'] == 3
    assert p2['requestCounter'] == 0 and p2['down'] is True and p0['down'] is False
    assert p3['backup'] is True and p0['backup'] is False
    assert (p1['weight'], p1['maxFails'], p1['failTimeout']) == (1, 3, 7)
    assert p0['outBytes'] > 0 and p0['inBytes'] > 0
    nog = {p['server']: p for p in doc['upstreamZones']['::nogroups']}
    assert nog['127.0.0.1:%d' % bports[0]]['requestCounter'] == 2
    # a failing upstream response is counted by class on the peer
    st, _, _ = get(fport, '/up/fail', host='counted.test')
    assert st == 503
    doc = get_json(sport)
    fails = sum(p['responses']['5xx'] for p in doc['upstreamZones']['grp'])
    assert fails == 1


def test_filter_by_host_counts_per_host(stack):
    start, fport, sport, _ = stack
    start(extra_http='vhost_traffic_status_filter_by_host on;')
    for h, n in (('a.example', 3), ('B.Example', 2)):
        for _ in range(n):
            assert status_of(raw_request(fport, req('/ok', host=h))) == 200
    raw_request(fport, req('/nf', host='a.example:8080'))
    doc = get_json(sport)
    zones = doc['serverZones']
    assert zones['a.example']['requestCounter'] == 4
    assert zones['a.example']['responses']['4xx'] == 1
    assert zones['b.example']['requestCounter'] == 2       # nginx lowercases Host
    assert 'counted.test' not in zones
    assert zones['*']['requestCounter'] == 6


def test_prometheus_passes_promtool_and_has_the_names(stack):
    start, fport, sport, bports = stack
    start(extra_http='vhost_traffic_status_histogram_buckets 0.005 0.01 0.1 1 10;')
    raw_request(fport, req('/ok'))
    raw_request(fport, req('/up/x'))
    raw_request(fport, req('/bare/x'))
    st, head, body = get(sport, '/status/format/prometheus')
    assert st == 200
    assert re.search(r'Content-Type: text/plain; version=0\.0\.4', head), head
    text = body.decode()
    ok, out = promtool(text)
    assert ok, out
    for name in ('nginx_vts_info', 'nginx_vts_start_time_seconds',
                 'nginx_vts_main_connections', 'nginx_vts_main_shm_usage_bytes',
                 'nginx_vts_server_bytes_total', 'nginx_vts_server_requests_total',
                 'nginx_vts_server_request_seconds_total', 'nginx_vts_server_request_seconds',
                 'nginx_vts_server_request_duration_seconds', 'nginx_vts_server_cache_total',
                 'nginx_vts_upstream_bytes_total', 'nginx_vts_upstream_requests_total',
                 'nginx_vts_upstream_request_seconds_total',
                 'nginx_vts_upstream_request_seconds',
                 'nginx_vts_upstream_response_seconds_total',
                 'nginx_vts_upstream_response_seconds',
                 'nginx_vts_upstream_request_duration_seconds',
                 'nginx_vts_upstream_response_duration_seconds',
                 'nginx_vts_upstream_peer_down'):
        assert re.search(r'^# TYPE %s ' % name, text, re.M), name
    assert re.search(r'^nginx_vts_info\{hostname="[^"]*",module_version="[^"]+",'
                     r'version="%s"\} 1$' % re.escape(locked_version('nginx')), text, re.M)
    for s in ('accepted', 'active', 'handled', 'reading', 'requests', 'waiting', 'writing'):
        assert 'nginx_vts_main_connections{status="%s"}' % s in text
    for s in ('max_size', 'used_size', 'used_node', 'free_size'):
        assert 'nginx_vts_main_shm_usage_bytes{shared="%s"}' % s in text
    assert 'nginx_vts_server_requests_total{host="counted.test",code="2xx"} 3' in text
    # v0.2.7: no code="total" series (sum() over code is the request count)
    assert 'code="total"' not in text
    assert 'nginx_vts_server_bytes_total{host="counted.test",direction="in"}' in text
    assert 'nginx_vts_server_requests_total{host="*",code="2xx"} 3' in text
    assert re.search(r'nginx_vts_server_request_duration_seconds_bucket\{host="counted.test",'
                     r'le="\+Inf"\} 3', text)
    assert 'nginx_vts_server_cache_total{host="counted.test",status="hit"} 0' in text
    b0 = '127.0.0.1:%d' % bports[0]
    assert 'nginx_vts_upstream_requests_total{upstream="grp",backend="%s",code="2xx"} 1' % b0 in text
    assert 'nginx_vts_upstream_requests_total{upstream="::nogroups",backend="%s",code="2xx"} 1' % b0 in text
    b2 = '127.0.0.1:%d' % bports[2]
    assert 'nginx_vts_upstream_peer_down{upstream="grp",backend="%s"} 1' % b2 in text
    assert 'nginx_vts_upstream_peer_down{upstream="grp",backend="%s"} 0' % b0 in text
    assert re.search(r'^# TYPE nginx_vts_server_request_duration_seconds histogram$', text, re.M)


def test_filter_by_set_key_and_duplicates(stack):
    start, fport, sport, _ = stack
    start(extra_server="""
        vhost_traffic_status_filter_by_set_key $uri uris::$server_name;
        vhost_traffic_status_filter_by_set_key $arg_country country;
        vhost_traffic_status_filter_by_set_key $arg_country country;
        vhost_traffic_status_filter_by_set_key $request_method;
    """)
    for path in ('/ok?country=kr', '/ok?country=kr', '/nf?country=us', '/ok'):
        raw_request(fport, req(path))
    doc = get_json(sport)
    fz = doc['filterZones']
    assert fz['uris::counted.test']['/ok']['requestCounter'] == 3
    assert fz['uris::counted.test']['/nf']['responses']['4xx'] == 1
    # check_duplicate (default on): the repeated directive counts once
    assert fz['country']['kr']['requestCounter'] == 2
    assert fz['country']['us']['requestCounter'] == 1
    # without NAME the group is the server_name
    assert fz['counted.test']['GET']['requestCounter'] == 4
    st, _, body = get(sport, '/status/format/prometheus')
    text = body.decode()
    # v0.2.7: the status class is the label `code`, as for servers; no total
    assert ('nginx_vts_filter_requests_total{filter="country",filter_name="kr",'
            'code="2xx"} 2') in text
    assert ('nginx_vts_filter_requests_total{filter="country",filter_name="us",'
            'code="4xx"} 1') in text
    assert 'direction="total"' not in text and 'direction="4xx"' not in text
    for name, typ in (('nginx_vts_filter_bytes_total', 'counter'),
                      ('nginx_vts_filter_requests_total', 'counter'),
                      ('nginx_vts_filter_request_seconds_total', 'counter'),
                      ('nginx_vts_filter_request_seconds', 'gauge'),
                      ('nginx_vts_filter_cache_total', 'counter')):
        assert '# TYPE %s %s\n' % (name, typ) in text, name
    assert ('nginx_vts_filter_bytes_total{filter="country",filter_name="kr",'
            'direction="in"}') in text
    assert promtool(text)[0]


def test_filter_check_duplicate_off_counts_twice(stack):
    start, fport, sport, _ = stack
    start(extra_server="""
        vhost_traffic_status_filter_check_duplicate off;
        vhost_traffic_status_filter_by_set_key $arg_c c;
        vhost_traffic_status_filter_by_set_key $arg_c c;
    """)
    raw_request(fport, req('/ok?c=x'))
    assert get_json(sport)['filterZones']['c']['x']['requestCounter'] == 2


def test_jsonp_and_format_override(stack):
    start, fport, sport, _ = stack
    start()
    raw_request(fport, req('/ok'))
    st, head, body = get(sport, '/status/format/jsonp')
    assert st == 200
    text = body.decode().strip()
    assert text.startswith('ngx_http_vhost_traffic_status_jsonp_callback(') and text.endswith(')')
    doc = parse_json(text[text.index('(') + 1:-1])
    assert doc['serverZones']['counted.test']['requestCounter'] == 1
    st, _, body = get(sport, '/status/format/jsonp?callback=myCb')
    assert body.decode().startswith('myCb(')
    st, _, body = get(sport, '/status/format/jsonp?callback=alert(1)//')
    assert body.decode().startswith('ngx_http_vhost_traffic_status_jsonp_callback(')
    # default format of the location is JSON
    st, head, body = get(sport, '/status')
    assert 'application/json' in head and parse_json(body)['nginxVersion'] == locked_version('nginx')
    st, head, body = get(sport, '/status/format/html')
    assert st == 200 and 'text/html' in head and b'<html' in body.lower()


@pytest.mark.parametrize('method', ['AMM', 'WMA'])
def test_averages_and_histogram(stack, method):
    start, fport, sport, _ = stack
    start(extra_http="""
        vhost_traffic_status_histogram_buckets 0.01 0.2 5;
        vhost_traffic_status_average_method %s 30s;
    """ % method)
    for t in ('0.05', '0.05', '0.4'):
        assert status_of(raw_request(fport, req('/up/slow?t=' + t))) == 200
    doc = get_json(sport)
    z = doc['serverZones']['counted.test']
    assert z['requestBuckets']['msecs'] == [10, 200, 5000]
    assert z['requestBuckets']['counters'] == [0, 2, 3]      # cumulative (v0.2.7)
    assert 480 <= z['requestMsecCounter'] <= 700
    assert len(z['requestMsecs']['msecs']) == 3
    # AMM: (50 + 50 + 400) / 3 = 166; WMA (weights 1, 2, 3): 1350 / 6 = 225
    if method == 'AMM':
        assert 160 <= z['requestMsec'] <= 200, z['requestMsec']
    else:
        assert 218 <= z['requestMsec'] <= 260, z['requestMsec']
    peers = [p for p in doc['upstreamZones']['grp'] if p['requestCounter']]
    assert sum(p['requestCounter'] for p in peers) == 3
    assert sum(p['responseMsecCounter'] for p in peers) >= 480
    # cumulative counters: the last bound (5 s) holds every response
    assert sum(p['responseBuckets']['counters'][-1] for p in peers) == 3
    st, _, body = get(sport, '/status/format/prometheus')
    text = body.decode()
    assert 'nginx_vts_server_request_duration_seconds_bucket{host="counted.test",le="0.200"} 2' in text
    assert 'nginx_vts_server_request_duration_seconds_bucket{host="counted.test",le="5.000"} 3' in text
    assert 'nginx_vts_server_request_duration_seconds_count{host="counted.test"} 3' in text
    assert re.search(r'nginx_vts_upstream_response_duration_seconds_bucket\{upstream="grp",'
                     r'backend="[^"]+",le="\+Inf"\} [12]', text)
    assert promtool(text)[0]


def test_counters_survive_hup_reload(stack):
    start, fport, sport, _ = stack
    n = start()
    for _ in range(4):
        raw_request(fport, req('/ok'))
    before = get_json(sport)
    assert before['serverZones']['counted.test']['requestCounter'] == 4
    n.reload()
    wait_for(lambda: get(sport, '/status')[0] == 200, what='status after reload')
    for _ in range(2):
        raw_request(fport, req('/nf'))
    after = get_json(sport)
    z = after['serverZones']['counted.test']
    assert z['requestCounter'] == 6 and z['responses']['4xx'] == 2
    assert after['loadMsec'] == before['loadMsec']


def test_control_status_reset_delete(stack):
    start, fport, sport, bports = stack
    start(extra_server='vhost_traffic_status_filter_by_set_key $arg_k kk;')
    for _ in range(3):
        raw_request(fport, req('/ok?k=v'))
    raw_request(fport, req('/up/x'))
    st, _, body = get(sport, '/status/control?cmd=status&group=server&zone=counted.test')
    assert st == 200
    doc = parse_json(body)
    # one named zone: that entry alone, keyed by its name (v0.2.7)
    assert list(doc) == ['counted.test']
    assert doc['counted.test']['requestCounter'] == 4
    st, _, body = get(sport, '/status/control?cmd=status&group=filter&zone=kk@v')
    assert parse_json(body)['v']['requestCounter'] == 3
    st, _, body = get(sport, '/status/control?cmd=reset&group=server&zone=counted.test')
    doc = parse_json(body)
    assert doc['processingReturn'] is True and doc['processingCounts'] == 1
    z = get_json(sport)['serverZones']['counted.test']
    assert z['requestCounter'] == 0 and z['inBytes'] == 0
    st, _, body = get(sport, '/status/control?cmd=delete&group=filter&zone=kk@v')
    assert parse_json(body)['processingReturn'] is True
    assert 'kk' not in get_json(sport)['filterZones']
    # the deleted entry comes back with new traffic, from zero
    raw_request(fport, req('/ok?k=v'))
    assert get_json(sport)['filterZones']['kk']['v']['requestCounter'] == 1
    b = '127.0.0.1:%d' % bports[0]
    st, _, body = get(sport, '/status/control?cmd=reset&group=upstream@group&zone=grp@' + b)
    assert parse_json(body)['processingReturn'] is True
    st, _, body = get(sport, '/status/control?cmd=delete&group=server&zone=nosuch')
    assert st == 200 and parse_json(body)['processingReturn'] is False
    for bad in ('/status/control', '/status/control?cmd=boom&group=server',
                '/status/control?cmd=status&group=nope', '/status/control?cmd=status',
                '/status/control?cmd=reset&group=%00%ff&zone=%'):
        st, head, body = get(sport, bad)
        assert st == 400, bad
        assert parse_json(body)['processingReturn'] is False


def test_set_by_filter_variable(stack):
    start, fport, sport, _ = stack
    start(extra_server="""
        location = /count {
            vhost_traffic_status_set_by_filter $ok_count server/counted.test/requestCounter;
            vhost_traffic_status_set_by_filter $c2xx server/counted.test/2xx;
            return 200 "$ok_count $c2xx\\n";
        }
    """)
    for _ in range(3):
        raw_request(fport, req('/ok'))
    st, _, body = get(fport, '/count', host='counted.test')
    assert body == b'3 3\n'


def test_counting_with_keepalive_and_two_workers(stack, nginx_factory):
    start, fport, sport, _ = stack
    start()
    raws = [b'GET /ok HTTP/1.1\r\nHost: x\r\n\r\n'] * 199 + \
           [b'GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n']
    assert keepalive_requests(fport, raws) == 200
    wait_for(lambda: get_json(sport)['serverZones']['counted.test']['requestCounter'] == 200,
             what='200 counted')
