"""traffic-status, issue 14: the directives added for VTS v0.2.7
compatibility (stats_by_upstream, ignore_status, the $vts_* variables,
set_by_filter with a variable GROUP, filter off vs filter_by_host,
filter_max_node eviction and the default per-group cap)."""
import re
import time

import pytest

from conftest import conf_wrap, free_port
from support.net import raw_request
from vts_util import backend_conf, get, get_json, keepalive_requests, req


def conf(fport, sport, bport, http_extra='', server_extra='', zone='shared:vts:16m'):
    return conf_wrap(f"""
    vhost_traffic_status_zone {zone};
    {http_extra}
    upstream grp {{ server 127.0.0.1:{bport}; }}
    server {{
        listen 127.0.0.1:{fport};
        server_name a.test;
        {server_extra}
        location / {{ return 200 "ok\\n"; }}
        location /missing {{ return 404; }}
        location /up/ {{ proxy_pass http://grp/; }}
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

    def start(http_extra='', server_extra='', zone='shared:vts:16m'):
        return nginx_factory(conf(fport, sport, bport, http_extra, server_extra, zone),
                             wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    return start, fport, sport


def ka(path, host='a.test'):
    return req(path, host=host).replace(b'Connection: close\r\n', b'')


def headers_of(resp):
    head = resp.split(b'\r\n\r\n', 1)[0].decode('latin-1')
    return {k.strip().lower(): v.strip() for k, _, v in
            (line.partition(':') for line in head.split('\r\n')[1:])}


def test_stats_by_upstream_off(stack):
    start, fport, sport = stack
    start('vhost_traffic_status_stats_by_upstream off;')
    assert keepalive_requests(fport, [ka('/up/x')] * 3) == 3
    doc = get_json(sport)
    assert doc['serverZones']['a.test']['requestCounter'] == 3
    (peer,) = doc['upstreamZones']['grp']          # configured, never counted
    assert peer['requestCounter'] == 0 and peer['responses']['2xx'] == 0


def test_stats_by_upstream_default_on(stack):
    start, fport, sport = stack
    start('vhost_traffic_status_stats_by_upstream on;')
    keepalive_requests(fport, [ka('/up/x')] * 2)
    assert get_json(sport)['upstreamZones']['grp'][0]['requestCounter'] == 2


def test_ignore_status_skips_classes_but_moves_the_time(stack):
    start, fport, sport = stack
    start('vhost_traffic_status_ignore_status 4xx 5xx;',
          'vhost_traffic_status_filter_by_set_key $uri uris;')
    keepalive_requests(fport, [ka('/')] * 2 + [ka('/missing')] * 3)
    doc = get_json(sport)
    a = doc['serverZones']['a.test']
    assert a['requestCounter'] == 2 and a['responses']['4xx'] == 0
    assert a['responses']['2xx'] == 2
    assert doc['serverZones']['*']['requestCounter'] == 2
    # the filter entry of the ignored URI exists (its last-use time moved) but counts nothing
    assert doc['filterZones']['uris']['/missing']['requestCounter'] == 0
    assert doc['filterZones']['uris']['/']['requestCounter'] == 2


def test_ignore_status_off_in_a_location(stack):
    start, fport, sport = stack
    start('vhost_traffic_status_ignore_status 4xx;',
          'location /counted404 { vhost_traffic_status_ignore_status off; return 404; }')
    keepalive_requests(fport, [ka('/missing'), ka('/counted404'), ka('/counted404')])
    a = get_json(sport)['serverZones']['a.test']
    assert a['requestCounter'] == 2 and a['responses']['4xx'] == 2


def test_vts_variables_in_response_headers(stack):
    start, fport, sport = stack
    start(server_extra='''
        location /vars {
            add_header X-Req $vts_request_counter;
            add_header X-2xx $vts_2xx_counter;
            add_header X-4xx $vts_4xx_counter;
            add_header X-In $vts_in_bytes;
            add_header X-Out $vts_out_bytes;
            add_header X-Miss $vts_cache_miss_counter;
            add_header X-Time $vts_request_time_counter;
            add_header X-Avg $vts_request_time;
            return 200 "v\\n";
        }''')
    keepalive_requests(fport, [ka('/')] * 3 + [ka('/missing')] * 2)
    doc = get_json(sport)['serverZones']['a.test']
    h = headers_of(raw_request(fport, req('/vars', host='a.test')))
    # the header is made before this request is counted: the five before it
    assert h['x-req'] == '5' and h['x-2xx'] == '3' and h['x-4xx'] == '2'
    assert h['x-in'] == str(doc['inBytes']) and h['x-out'] == str(doc['outBytes'])
    assert h['x-miss'] == '0'
    assert h['x-time'] == str(doc['requestMsecCounter'])
    assert re.fullmatch(r'\d+', h['x-avg'])
    h = headers_of(raw_request(fport, req('/vars', host='a.test')))
    assert h['x-req'] == '6' and h['x-2xx'] == '4'


def test_vts_variables_follow_filter_by_host(stack):
    start, fport, sport = stack
    start('vhost_traffic_status_filter_by_host on;',
          'location /vars { add_header X-Req $vts_request_counter; return 200; }')
    keepalive_requests(fport, [ka('/', host='h1.test')] * 4 + [ka('/', host='h2.test')])
    h = headers_of(raw_request(fport, req('/vars', host='h1.test')))
    assert h['x-req'] == '4'
    h = headers_of(raw_request(fport, req('/vars', host='h2.test')))
    assert h['x-req'] == '1'
    h = headers_of(raw_request(fport, req('/vars', host='new.test')))
    assert 'x-req' not in h             # no zone yet for this Host: not found (VTS)


def test_set_by_filter_variable_group(stack):
    start, fport, sport = stack
    start(server_extra='''
        vhost_traffic_status_filter_by_set_key $uri uris;
        location /get {
            vhost_traffic_status_set_by_filter $stat $arg_g/$arg_z/$arg_n;
            add_header X-Stat $stat;
            return 200;
        }''')
    keepalive_requests(fport, [ka('/')] * 3 + [ka('/missing')])
    get_h = lambda q: headers_of(raw_request(fport, req('/get?' + q, host='a.test')))['x-stat']
    assert get_h('g=server&z=a.test&n=requestCounter') == '4'
    assert get_h('g=server&z=a.test&n=4xx') == '1'
    assert get_h('g=filter&z=uris@/missing&n=requestCounter') == '1'
    assert get_h('g=filter&z=uris@/&n=2xx') == '3'
    assert get_h('g=nope&z=a.test&n=requestCounter') == '0'      # unknown group: 0
    assert get_h('g=server&z=a.test&n=bogus') == '0'


def test_filter_off_also_stops_host_keying(stack):
    start, fport, sport = stack
    start('vhost_traffic_status_filter_by_host on;',
          'location /nofilter { vhost_traffic_status_filter off; return 200; }')
    keepalive_requests(fport, [ka('/', host='h1.test'), ka('/nofilter', host='h1.test'),
                               ka('/nofilter', host='h2.test')])
    zones = get_json(sport)['serverZones']
    assert zones['h1.test']['requestCounter'] == 1
    assert zones['a.test']['requestCounter'] == 2
    assert 'h2.test' not in zones


def test_filter_max_node_evicts_the_least_recently_updated(stack):
    start, fport, sport = stack
    start('vhost_traffic_status_filter_max_node 3 uris;',
          'vhost_traffic_status_filter_by_set_key $uri uris;')
    for p in ['/a', '/b', '/c']:
        raw_request(fport, req(p, host='a.test'))
        time.sleep(0.01)
    raw_request(fport, req('/a', host='a.test'))        # /b is now the oldest
    time.sleep(0.01)
    raw_request(fport, req('/d', host='a.test'))
    doc = get_json(sport)
    assert sorted(doc['filterZones']['uris']) == ['/a', '/c', '/d']
    assert doc['filterZones']['uris']['/a']['requestCounter'] == 2
    assert doc['filterZones']['uris']['/d']['requestCounter'] == 1
    assert doc['sharedZones']['droppedNodes'] == {'zoneFull': 0, 'maxNode': 0, 'evicted': 1}
    st, _, body = get(sport, '/status/format/prometheus')
    assert 'nginx_vts_main_shm_dropped_nodes_total{reason="evicted"} 1' in body.decode()


def test_default_cap_per_filter_group(stack):
    start, fport, sport = stack
    start(server_extra='vhost_traffic_status_filter_by_set_key $uri uris;\n'
                       'vhost_traffic_status_filter_by_set_key $arg_k small;')
    n = 1100
    raws = [ka('/p%04d?k=%d' % (i, i % 3)) for i in range(n)]
    assert keepalive_requests(fport, raws) == n
    doc = get_json(sport)
    uris = doc['filterZones']['uris']
    assert len(uris) == 1024                       # the default cap of one group
    assert '/p%04d' % (n - 1) in uris              # the newest is kept
    assert len(doc['filterZones']['small']) == 3   # other groups have their own cap
    assert doc['sharedZones']['droppedNodes']['evicted'] == n - 1024
    assert doc['serverZones']['a.test']['requestCounter'] == n
