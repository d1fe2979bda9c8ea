"""traffic-status: hostile input, full zones, node caps, invalid configuration,
the seed's merged /metrics, dump persistence, cache zones."""
import json
import pathlib
import re
import socket

import pytest

from conftest import conf_wrap, free_port, wait_for
from support.net import http_get, raw_request
from support.probes import promtool
from vts_util import (HOST_FROM_HEADER, backend_conf, get, get_json, hostile_host_request, many_requests,
                      req, status_of)


def simple_conf(fport, sport, http_extra='', zone='shared:vts:4m', server_extra='',
                workers=1):
    return conf_wrap(f"""
    vhost_traffic_status_zone {zone};
    {http_extra}
    server {{
        listen 127.0.0.1:{fport};
        server_name default.test;
        {server_extra}
        location / {{ return 200 "ok\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{sport};
        server_name status.test;
        vhost_traffic_status off;
        location /status {{ vhost_traffic_status_display; }}
    }}
""", workers=workers)


def send_hosts(port, hosts):
    """One request per Host, on a few parallel keep-alive connections."""
    return many_requests(port, [b'GET / HTTP/1.1\r\nHost: ' + h + b'\r\n\r\n' for h in hosts])


def check_outputs(sport):
    doc = get_json(sport)                     # parses: valid JSON
    st, _, body = get(sport, '/status/format/prometheus')
    assert st == 200
    text = body.decode('utf-8')               # valid UTF-8
    ok, out = promtool(text)
    assert ok, out[:2000]
    return doc, text


def test_hostile_host_headers_are_escaped(nginx_factory):
    fport, sport = free_port(), free_port()
    nginx_factory(simple_conf(fport, sport, 'vhost_traffic_status_filter_by_host on;',
                              server_extra=HOST_FROM_HEADER),
                  wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    hostile = [b'q"uote.test', b'back\\slash.test', b'tab\there.test', b'ctl\x01x.test',
               b'\xff\xfe.invalid-utf8', b'caf\xc3\xa9.test', b'{"json":1}',
               b'a}b{c', b'x' * 2000, b'le="+Inf"', b'%0a.test']
    # nginx 1.29+ refuses these in the Host header itself (400), counted under server_name
    for h in hostile[:2]:
        resp = raw_request(fport, b'GET / HTTP/1.1\r\nHost: ' + h + b'\r\nConnection: close\r\n\r\n')
        assert status_of(resp) == 400, resp[:200]
    for h in hostile:
        raw_request(fport, hostile_host_request(h, b'Connection: close\r\n'))
    # a bare LF inside the header line, and CR alone
    raw_request(fport, b'GET / HTTP/1.1\r\nHost: new\nline.test\r\nConnection: close\r\n\r\n')
    raw_request(fport, b'GET / HTTP/1.1\r\nHost: cr\rhost\r\nConnection: close\r\n\r\n')
    doc, text = check_outputs(sport)
    zones = doc['serverZones']
    assert zones['q"uote.test']['requestCounter'] == 1
    assert zones['caf\u00e9.test']['requestCounter'] == 1
    assert zones['{"json"']['requestCounter'] == 1     # nginx strips ":1" as a port
    assert 'nginx_vts_server_requests_total{host="q\\"uote.test",code="2xx"} 1' in text
    # every request is in the sum, whatever happened to its Host
    total = zones['*']['requestCounter']
    assert total == sum(z['requestCounter'] for k, z in zones.items() if k != '*')
    assert total >= len(hostile) + 2
    assert zones['default.test']['requestCounter'] >= 2       # the 400s


def test_ten_thousand_hosts_are_capped_and_counted(nginx_factory):
    fport, sport = free_port(), free_port()
    n = nginx_factory(simple_conf(fport, sport, 'vhost_traffic_status_filter_by_host on;',
                                  zone='shared:vts:16m'),
                      wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    hosts = [b'h%05d.example' % i for i in range(10000)]
    assert send_hosts(fport, hosts) == 10000
    doc, text = check_outputs(sport)
    zones = doc['serverZones']
    host_zones = [k for k in zones if k.startswith('h') and k.endswith('.example')]
    # the default cap of Host-keyed zones is 1024; the rest go to server_name
    assert len(host_zones) == 1024
    assert zones['default.test']['requestCounter'] == 10000 - 1024
    assert zones['*']['requestCounter'] == 10000
    assert doc['sharedZones']['droppedNodes']['maxNode'] == 10000 - 1024
    assert ('nginx_vts_main_shm_dropped_nodes_total{reason="max_node"} %d'
            % (10000 - 1024)) in text
    assert 'alert' not in n.error_log and 'crit' not in n.error_log


def test_full_zone_drops_new_keys_and_keeps_old(nginx_factory):
    fport, sport = free_port(), free_port()
    n = nginx_factory(simple_conf(fport, sport,
                                  'vhost_traffic_status_filter_by_host on;\n'
                                  'vhost_traffic_status_filter_max_node 100000;',
                                  zone='shared:vts:128k'),
                      wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    for _ in range(3):
        raw_request(fport, req('/', host='first.test'))
    hosts = [b'f%04d.example' % i for i in range(400)]
    assert send_hosts(fport, hosts) == 400
    doc, text = check_outputs(sport)
    zones = doc['serverZones']
    assert zones['first.test']['requestCounter'] == 3
    dropped = doc['sharedZones']['droppedNodes']['zoneFull']
    assert dropped > 0
    assert 'nginx_vts_main_shm_dropped_nodes_total{reason="zone_full"} %d' % dropped in text
    kept = len([k for k in zones if k.startswith('f') and k.endswith('.example')])
    assert 0 < kept < 400 and dropped >= 400 - kept
    # requests whose entry could not be stored still count in the sum
    assert zones['*']['requestCounter'] == 403
    assert 'no memory' not in n.error_log


def test_filter_max_node_prefix(nginx_factory):
    fport, sport = free_port(), free_port()
    nginx_factory(simple_conf(fport, sport, 'vhost_traffic_status_filter_max_node 3 uris;',
                              server_extra='vhost_traffic_status_filter_by_set_key $uri uris;\n'
                                           'vhost_traffic_status_filter_by_set_key $uri other;'),
                  wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    for i in range(6):
        raw_request(fport, req('/p%d' % i, host='x'))
    doc = get_json(sport)
    # at the cap the least recently updated entry makes room (v0.2.7)
    assert sorted(doc['filterZones']['uris']) == ['/p3', '/p4', '/p5']
    assert len(doc['filterZones']['other']) == 6
    assert doc['sharedZones']['droppedNodes']['evicted'] == 3
    assert doc['sharedZones']['droppedNodes']['maxNode'] == 0


def _t(nginx_factory, http_extra='', server_extra='', main=''):
    fport, sport = free_port(), free_port()
    conf = simple_conf(fport, sport, http_extra, server_extra=server_extra)
    n = nginx_factory(conf, start=False)
    return n.test_config()


@pytest.mark.parametrize('http_extra,server_extra,message', [
    ('vhost_traffic_status_display_format xml;', '', 'invalid format "xml"'),
    ('vhost_traffic_status_histogram_buckets 0.5 0.1;', '', 'must ascend'),
    ('vhost_traffic_status_histogram_buckets 0.1 abc;', '', 'invalid bucket "abc"'),
    ('vhost_traffic_status_histogram_buckets ' + ' '.join(str(i) for i in range(1, 35)) + ';', '',
     'too many buckets'),
    ('vhost_traffic_status_average_method XYZ;', '', 'invalid method "XYZ"'),
    ('vhost_traffic_status_average_method AMM forever;', '', 'invalid period "forever"'),
    ('vhost_traffic_status_filter_max_node 0;', '', 'invalid number "0"'),
    ('vhost_traffic_status_filter_by_host maybe;', '', 'it must be "on" or "off"'),
    ('vhost_traffic_status_dump /tmp/x 0s;', '', 'invalid period "0s"'),
    ('', 'vhost_traffic_status_set_by_filter $v nope/zone/requestCounter;', 'invalid group "nope"'),
    ('', 'vhost_traffic_status_set_by_filter $v server/zone/bogus;', 'unknown statistic "bogus"'),
    ('', 'vhost_traffic_status_set_by_filter v server/zone/inBytes;', 'invalid variable name "v"'),
])
def test_invalid_directives_fail_with_file_and_line(nginx_factory, http_extra, server_extra,
                                                    message):
    r = _t(nginx_factory, http_extra, server_extra)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
    assert re.search(r'nginx\.conf:\d+', r.stderr), r.stderr


def test_invalid_zone_arguments(nginx_factory):
    for zone, msg in (('vts:1m', 'expected "shared:NAME:SIZE"'),
                      ('shared:vts', 'expected "shared:NAME:SIZE"'),
                      ('shared:vts:lots', 'invalid zone size "lots"'),
                      ('shared:vts:4k', 'is too small')):
        conf = simple_conf(free_port(), free_port(), zone=zone)
        n = nginx_factory(conf, start=False, name='z%d' % len(zone))
        r = n.test_config()
        assert r.returncode != 0 and msg in r.stderr, (zone, r.stderr)
        assert re.search(r'nginx\.conf:\d+', r.stderr)


def test_all_directives_parse(nginx_factory, tmp_path):
    fport, sport = free_port(), free_port()
    conf = conf_wrap(f"""
    vhost_traffic_status_zone;
    vhost_traffic_status on;
    vhost_traffic_status_display_format prometheus;
    vhost_traffic_status_display_jsonp cb;
    vhost_traffic_status_display_sum_key all;
    vhost_traffic_status_filter on;
    vhost_traffic_status_filter_by_host off;
    vhost_traffic_status_filter_by_set_key $uri uris;
    vhost_traffic_status_filter_check_duplicate on;
    vhost_traffic_status_filter_max_node 16 uris client::ports;
    vhost_traffic_status_histogram_buckets 0.005 0.01 0.05 0.1 0.5 1 5 10;
    vhost_traffic_status_average_method WMA 30s;
    vhost_traffic_status_bypass_stats off;
    vhost_traffic_status_set_by_filter $total server/*/requestCounter;
    vhost_traffic_status_dump {tmp_path}/vts.dump 10s;
    server {{
        listen 127.0.0.1:{fport};
        vhost_traffic_status_filter_by_host on;
        if ($arg_x) {{
            vhost_traffic_status_set_by_filter $y server/x/inBytes;
        }}
        location / {{
            vhost_traffic_status off;
            vhost_traffic_status_display_sum_key sum;
            return 200;
        }}
        location /s {{
            vhost_traffic_status_display;
            vhost_traffic_status_display_format html;
        }}
    }}
    """)
    n = nginx_factory(conf, start=False)
    r = n.test_config()
    assert r.returncode == 0, r.stderr


def test_display_without_zone_fails_cleanly(nginx_factory):
    port = free_port()
    conf = conf_wrap(f"""
    server {{ listen 127.0.0.1:{port}; location /s {{ vhost_traffic_status_display; }} }}
    """)
    # (issue 13: it used to start and answer 503 to every request)
    r = nginx_factory(conf, start=False).test_config()
    assert r.returncode != 0
    assert '"vhost_traffic_status_display" needs "vhost_traffic_status_zone"' in r.stderr, r.stderr
    assert re.search(r'nginx\.conf:\d+', r.stderr), r.stderr


SEED_STATUS = r"""
    lua_shared_dict healthcheck 1m;
    vhost_traffic_status_filter_by_host on;
    vhost_traffic_status_zone shared:vhost_traffic_status:64m;
    upstream foo {
        server 127.0.0.1:%(b0)d;
        server 127.0.0.1:%(b1)d;
    }
    server {
        listen 127.0.0.1:%(front)d;
        location /api/ { proxy_pass http://foo; }
    }
    server {
        listen 127.0.0.1:%(status)d;
        location = /status/format/prometheus {
            internal;
            vhost_traffic_status_display;
            vhost_traffic_status_display_format prometheus;
        }
        location = /metrics {
            access_log off;
            default_type text/plain;
            content_by_lua_block {
                local chunks = {}
                local vts_up = 0
                local vts = ngx.location.capture("/status/format/prometheus")
                if vts.status == ngx.HTTP_OK then
                    vts_up = 1
                    table.insert(chunks, vts.body)
                else
                    table.insert(chunks, "# vts metrics unavailable: status=" .. tostring(vts.status))
                end
                table.insert(chunks, "# HELP nginx_metrics_source_up Source availability for merged /metrics endpoint")
                table.insert(chunks, "# TYPE nginx_metrics_source_up gauge")
                table.insert(chunks, string.format("nginx_metrics_source_up{source=\"vts\"} %%d", vts_up))
                ngx.print(table.concat(chunks, "\n"))
            }
        }
    }
"""


def test_seed_config_metrics_through_location_capture(nginx_factory):
    b = [free_port(), free_port()]
    nginx_factory(backend_conf(b + [free_port(), free_port()]), name='backend',
                  wait_ports=[('127.0.0.1', p) for p in b])
    front, status = free_port(), free_port()
    conf = conf_wrap(SEED_STATUS % {'b0': b[0], 'b1': b[1], 'front': front, 'status': status})
    nginx_factory(conf, name='front', wait_ports=[('127.0.0.1', front), ('127.0.0.1', status)])
    for _ in range(4):
        assert status_of(raw_request(front, req('/api/x', host='api.example'))) == 200
    # the internal location is not reachable from outside
    st, _, _ = get(status, '/status/format/prometheus')
    assert st == 404
    st, _, body = get(status, '/metrics')
    assert st == 200
    text = body.decode()
    assert 'nginx_metrics_source_up{source="vts"} 1' in text
    assert 'nginx_vts_server_requests_total{host="api.example",code="2xx"} 4' in text
    for p in b:
        assert ('nginx_vts_upstream_requests_total{upstream="foo",backend="127.0.0.1:%d",'
                'code="2xx"} 2' % p) in text
    ok, out = promtool(text + '\n')
    assert ok, out + text[:300]


def test_dump_survives_restart(nginx_factory, tmp_path):
    fport, sport = free_port(), free_port()
    (tmp_path / 'dump').mkdir()
    (tmp_path / 'dump').chmod(0o777)          # workers run as nobody
    dump = tmp_path / 'dump' / 'vts.dump'
    conf = simple_conf(fport, sport, 'vhost_traffic_status_dump %s 1s;' % dump)
    n = nginx_factory(conf, name='d1', wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    for _ in range(5):
        raw_request(fport, req('/', host='x'))
    # the periodic save
    wait_for(lambda: dump.exists() and dump.stat().st_size > 100, timeout=10,
             what='periodic dump')
    for _ in range(2):
        raw_request(fport, req('/', host='x'))
    n.stop()
    n.start(wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    doc = get_json(sport)
    assert doc['serverZones']['default.test']['requestCounter'] == 7
    assert 'restored' in n.error_log
    # a corrupt dump is ignored with a warning, never a crash
    n.stop()
    dump.write_bytes(b'garbage' * 10)
    n.start(wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    assert 'default.test' not in get_json(sport)['serverZones']
    assert 'is not valid' in n.error_log


def test_cache_zone_statistics(nginx_factory, tmp_path):
    b = [free_port() for _ in range(4)]
    nginx_factory(backend_conf(b), name='backend', wait_ports=[('127.0.0.1', b[0])])
    fport, sport = free_port(), free_port()
    conf = conf_wrap(f"""
    vhost_traffic_status_zone;
    proxy_cache_path {tmp_path}/cache keys_zone=cz:1m max_size=10m;
    server {{
        listen 127.0.0.1:{fport};
        server_name cached.test;
        location / {{
            proxy_pass http://127.0.0.1:{b[0]};
            proxy_cache cz;
            proxy_cache_valid 200 1m;
        }}
    }}
    server {{
        listen 127.0.0.1:{sport};
        vhost_traffic_status off;
        location /status {{ vhost_traffic_status_display; }}
    }}
    """)
    nginx_factory(conf, name='front', wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    for _ in range(3):
        assert status_of(raw_request(fport, req('/c'))) == 200
    doc = get_json(sport)
    cz = doc['cacheZones']['cz']
    assert cz['maxSize'] == 10 * 1024 * 1024
    assert cz['responses']['miss'] == 1 and cz['responses']['hit'] == 2
    assert cz['usedSize'] > 0 and cz['outBytes'] > 0
    sz = doc['serverZones']['cached.test']['responses']
    assert sz['miss'] == 1 and sz['hit'] == 2
    st, _, body = get(sport, '/status/format/prometheus')
    text = body.decode()
    assert 'nginx_vts_cache_requests_total{cache_zone="cz",status="hit"} 2' in text
    assert 'nginx_vts_cache_usage_bytes{cache_zone="cz",cache_size="max"} 10485760' in text
    assert 'nginx_vts_server_cache_total{host="cached.test",status="miss"} 1' in text
    assert promtool(text)[0]


def test_two_workers_share_counts(nginx_factory):
    """Both workers serve requests and each one's status answer counts them
    all.  Every answer names its worker ($pid), so the test proves the
    sharing: one worker serving everything (which passed the old test) would
    not reach the two pids, and per-worker counts would not reach the sum."""
    fport, sport = free_port(), free_port()
    conf = conf_wrap(f"""
    vhost_traffic_status_zone shared:vts:4m;
    server {{
        listen 127.0.0.1:{fport} reuseport;
        server_name default.test;
        location / {{ return 200 "$pid"; }}
    }}
    server {{
        listen 127.0.0.1:{sport} reuseport;
        server_name status.test;
        vhost_traffic_status off;
        location /status {{
            add_header X-Pid $pid always;
            vhost_traffic_status_display;
        }}
    }}
""", workers=2)
    n = nginx_factory(conf, workers=2, wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    workers = set(n.worker_pids())
    assert len(workers) == 2
    served = {}                 # pid -> requests it answered

    def both_served():
        resp = raw_request(fport, req('/', host='x'))
        assert status_of(resp) == 200, resp
        pid = int(resp.partition(b'\r\n\r\n')[2])
        served[pid] = served.get(pid, 0) + 1
        return len(served) == 2 and min(served.values()) >= 5
    # reuseport spreads new connections over the workers by their source ports
    wait_for(both_served, timeout=30, interval=0, what='both workers to serve 5 requests')
    assert set(served) == workers, (served, workers)
    total = sum(served.values())
    views = {}                  # pid -> the count that worker's status answer shows

    def both_views():
        st, headers, body = http_get('127.0.0.1', sport, '/status/format/json',
                                     headers={'Host': 'status.test'})
        views[int(headers['x-pid'])] = json.loads(body)['serverZones']['default.test']['requestCounter']
        return len(views) == 2
    wait_for(both_views, timeout=30, interval=0, what='both workers to answer the status')
    assert views == dict.fromkeys(workers, total), (views, served)


def test_counts_survive_a_worker_crash(nginx_factory):
    import os
    import signal
    fport, sport = free_port(), free_port()
    n = nginx_factory(simple_conf(fport, sport), workers=1,
                      wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    for _ in range(5):
        raw_request(fport, req('/', host='x'))
    old = n.worker_pids()
    os.kill(old[0], signal.SIGKILL)
    wait_for(lambda: n.worker_pids() and n.worker_pids() != old, what='respawned worker')
    for _ in range(3):
        raw_request(fport, req('/', host='x'))
    assert get_json(sport)['serverZones']['default.test']['requestCounter'] == 8
    # the deliberate kill is logged as "exited on signal 9"; drop that line so
    # the fixture's crash check still catches any other crash
    log = n.prefix / 'logs' / 'error.log'
    lines = log.read_text(errors='replace').splitlines(True)
    assert any('exited on signal 9' in l for l in lines)
    log.write_text(''.join(l for l in lines if 'exited on signal 9' not in l))
