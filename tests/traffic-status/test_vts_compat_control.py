"""traffic-status, issue 14: the control endpoint as VTS v0.2.7
(delete&expire deletes only idle zones and nothing on a bad value,
group=* is the whole document, zone=::main, URL-decoded arguments, one
named zone alone)."""
import time

import pytest

from conftest import conf_wrap, free_port
from support.net import raw_request
from support.probes import parse_json
from vts_util import backend_conf, get, get_json, req


@pytest.fixture
def stack(nginx_factory):
    fport, sport, bport = free_port(), free_port(), free_port()
    nginx_factory(backend_conf([bport]), name='backend', wait_ports=[('127.0.0.1', bport)])
    nginx_factory(conf_wrap(f"""
    vhost_traffic_status_zone shared:vts:4m;
    vhost_traffic_status_filter_by_host on;
    upstream grp {{ server 127.0.0.1:{bport}; }}
    server {{
        listen 127.0.0.1:{fport};
        server_name a.test;
        vhost_traffic_status_filter_by_set_key $uri uris;
        location / {{ return 200 "ok\\n"; }}
        location /up/ {{ proxy_pass http://grp/; }}
    }}
    server {{
        listen 127.0.0.1:{sport};
        server_name status.test;
        vhost_traffic_status off;
        location /status {{ vhost_traffic_status_display; }}
    }}
"""), wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    return fport, sport, bport


def control(sport, query):
    st, _, body = get(sport, '/status/control?' + query)
    return st, parse_json(body)


def test_delete_with_expire_only_idle_zones(stack):
    fport, sport, _ = stack
    raw_request(fport, req('/', host='old.test'))
    time.sleep(2.2)
    raw_request(fport, req('/', host='new.test'))
    st, ans = control(sport, 'cmd=delete&group=server&zone=*&expire=2')
    assert st == 200
    assert ans == {'processingReturn': True, 'processingCommandString': 'delete',
                   'processingGroupString': 'server', 'processingZoneString': '*',
                   'processingCounts': 1}
    zones = get_json(sport)['serverZones']
    assert 'old.test' not in zones and zones['new.test']['requestCounter'] == 1
    # nothing is idle for an hour: nothing deleted
    st, ans = control(sport, 'cmd=delete&group=server&expire=1h')
    assert st == 200 and ans['processingReturn'] is False and ans['processingCounts'] == 0
    assert 'new.test' in get_json(sport)['serverZones']


@pytest.mark.parametrize('expire', ['typo', '1x', '', '-5'])
def test_delete_with_bad_expire_deletes_nothing(stack, expire):
    fport, sport, _ = stack
    raw_request(fport, req('/', host='keep.test'))
    st, ans = control(sport, 'cmd=delete&group=server&zone=*&expire=' + expire)
    assert st == 400
    assert ans['processingReturn'] is False and ans['processingCounts'] == 0
    assert 'expire' in ans['error']
    assert get_json(sport)['serverZones']['keep.test']['requestCounter'] == 1


def test_group_star_is_the_whole_document(stack):
    fport, sport, _ = stack
    raw_request(fport, req('/up/x', host='a.test'))
    st, doc = control(sport, 'cmd=status&group=*')
    assert st == 200
    full = get_json(sport)
    assert list(doc) == list(full)
    assert {'hostName', 'connections', 'sharedZones', 'serverZones', 'filterZones',
            'upstreamZones', 'cacheZones'} <= set(doc)
    assert doc['serverZones']['a.test']['requestCounter'] == 1


def test_zone_main(stack):
    fport, sport, _ = stack
    st, doc = control(sport, 'cmd=status&group=server&zone=::main')
    assert st == 200
    assert list(doc) == ['hostName', 'moduleVersion', 'nginxVersion', 'loadMsec', 'nowMsec',
                         'connections', 'sharedZones']


def test_url_encoded_group_and_zone(stack):
    fport, sport, bport = stack
    raw_request(fport, req('/up/x', host='a.test'))
    peer = '127.0.0.1:%d' % bport
    st, doc = control(sport, 'cmd=status&group=upstream%40group&zone=grp%40' + peer.replace(':', '%3A'))
    assert st == 200
    assert list(doc) == [peer]
    assert doc[peer]['server'] == peer and doc[peer]['requestCounter'] == 1
    st, ans = control(sport, 'cmd=reset&group=upstream%40group&zone=grp')
    assert st == 200 and ans['processingGroupString'] == 'upstream@group'
    assert ans['processingCounts'] == 1
    assert get_json(sport)['upstreamZones']['grp'][0]['requestCounter'] == 0


def test_one_named_zone_alone(stack):
    fport, sport, _ = stack
    raw_request(fport, req('/', host='one.test'))
    raw_request(fport, req('/', host='two.test'))
    st, doc = control(sport, 'cmd=status&group=server&zone=one.test')
    assert st == 200 and list(doc) == ['one.test']
    assert doc['one.test']['requestCounter'] == 1
    st, doc = control(sport, 'cmd=status&group=filter&zone=uris@/')
    assert list(doc) == ['/'] and doc['/']['requestCounter'] == 2
    # a whole group stays in its section
    st, doc = control(sport, 'cmd=status&group=server&zone=*')
    assert list(doc) == ['serverZones'] and '*' in doc['serverZones']
    st, doc = control(sport, 'cmd=status&group=filter&zone=uris')
    assert list(doc) == ['filterZones'] and list(doc['filterZones']) == ['uris']


def test_expire_counts_a_restored_zone_as_used_at_the_restart(nginx_factory, tmp_path):
    fport, sport = free_port(), free_port()
    dumpdir = tmp_path / 'dump'
    dumpdir.mkdir()
    dumpdir.chmod(0o777)                       # workers run as nobody under root
    n = nginx_factory(conf_wrap(f"""
    vhost_traffic_status_zone shared:vts:4m;
    vhost_traffic_status_filter_by_host on;
    vhost_traffic_status_dump {dumpdir / 'vts.db'} 3600s;
    server {{
        listen 127.0.0.1:{fport};
        location / {{ return 200 "ok\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{sport};
        server_name status.test;
        vhost_traffic_status off;
        location /status {{ vhost_traffic_status_display; }}
    }}
"""), start=False)
    ports = [('127.0.0.1', fport), ('127.0.0.1', sport)]
    n.start(wait_ports=ports)
    raw_request(fport, req('/', host='restored.test'))
    time.sleep(5)
    n.stop()                                   # the master saves the dump
    n.start(wait_ports=ports)
    assert get_json(sport)['serverZones']['restored.test']['requestCounter'] == 1
    # its last request was 5 s ago, but it counts as used at the restart
    st, ans = control(sport, 'cmd=delete&group=server&expire=4')
    assert st == 200 and ans['processingCounts'] == 0
    time.sleep(4.2)
    st, ans = control(sport, 'cmd=delete&group=server&expire=4')
    assert ans['processingCounts'] == 1
    assert 'restored.test' not in get_json(sport)['serverZones']
