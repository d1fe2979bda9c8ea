"""traffic-status: caps hold for entries restored from the dump, and a
restore leaves room for new keys (issue 13, case 3)."""
from conftest import free_port
from vts_util import counted_and_status, get_json, many_requests


def dumped_conf(fport, sport, dump, zone, cap):
    return counted_and_status(fport, sport, http=f"""
    vhost_traffic_status_zone shared:vts:{zone};
    vhost_traffic_status_filter_by_host on;
    vhost_traffic_status_filter_max_node {cap};
    vhost_traffic_status_dump {dump} 3600s;""")


def send_hosts(port, hosts):
    return many_requests(port, [b'GET / HTTP/1.1\r\nHost: ' + h + b'\r\n\r\n' for h in hosts])


def restarts(nginx_factory, tmp_path, zone, cap, rounds, per_round):
    fport, sport = free_port(), free_port()
    dumpdir = tmp_path / 'dump'
    dumpdir.mkdir()
    dumpdir.chmod(0o777)                       # workers run as nobody under root
    n = nginx_factory(dumped_conf(fport, sport, dumpdir / 'vts.db', zone, cap), start=False)
    for r in range(rounds):
        n.start(wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
        hosts = [b'r%d-h%04d.test' % (r, i) for i in range(per_round)]
        assert send_hosts(fport, hosts) == per_round
        doc = get_json(sport)
        n.stop()
    n.start(wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    return n, fport, sport, doc


def test_the_host_cap_holds_across_four_restarts(nginx_factory, tmp_path):
    n, fport, sport, _ = restarts(nginx_factory, tmp_path, '8m', 100, 4, 150)
    doc = get_json(sport)
    hosts = [k for k in doc['serverZones'] if k.startswith('r')]
    assert len(hosts) <= 100, len(hosts)
    assert 'restored' in n.error_log


def test_a_restored_full_zone_leaves_room_for_new_keys(nginx_factory, tmp_path):
    # 256k: room for about 60 entries; 150 hosts fill it before the restart
    n, fport, sport, before = restarts(nginx_factory, tmp_path, '256k', 10000, 1, 150)
    assert before['sharedZones']['droppedNodes']['zoneFull'] > 0
    assert send_hosts(fport, [b'after-restart.test']) == 1
    doc = get_json(sport)
    assert doc['serverZones']['after-restart.test']['requestCounter'] == 1
    assert doc['sharedZones']['droppedNodes']['zoneFull'] == 0
