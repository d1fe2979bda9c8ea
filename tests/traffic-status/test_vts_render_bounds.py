"""traffic-status: rendering a full zone is bounded (issue 13, case 6).

A 64 MB zone filled with filter entries keyed by client input ($arg_x);
20 clients scrape /format/prometheus at once (two more connect and read
nothing): the worker's memory stays bounded (each render sends its output in
64 KB pieces and waits for a slow client instead of holding the document),
and a plain request to the same worker is answered quickly meanwhile (the
renders run in time slices between the worker's other events)."""
import socket
import statistics
import subprocess
import time

import pytest

from conftest import IS_ASAN, free_port
from vts_util import counted_and_status, dechunk, get_json, many_requests

RENDERS = 20


def full_zone_conf(fport, sport):
    return counted_and_status(
        fport, sport, http='    vhost_traffic_status_zone shared:vts:64m;\n'
                           # above the default 1024 per group: the zone itself must fill
                           '    vhost_traffic_status_filter_max_node 100000 x;',
        counted='vhost_traffic_status_filter_by_set_key $arg_x x;',
        status='location /plain { return 200 "plain\\n"; }')


def rss_kb(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise AssertionError('no VmRSS for %d' % pid)


def scrape(port, path):
    """(seconds, body bytes) of one GET read at full speed."""
    t0 = time.monotonic()
    with socket.create_connection(('127.0.0.1', port), timeout=120) as s:
        s.sendall(b'GET ' + path.encode() + b' HTTP/1.1\r\nHost: status.test\r\n'
                  b'Connection: close\r\n\r\n')
        chunks = []
        while True:
            c = s.recv(1 << 16)
            if not c:
                break
            chunks.append(c)
    return time.monotonic() - t0, b''.join(chunks)


@pytest.fixture
def full_zone(nginx_factory):
    fport, sport = free_port(), free_port()
    n = nginx_factory(full_zone_conf(fport, sport), workers=1,
                      wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    # about 3.2 KB an entry: 22,000 keys overfill 64 MB
    raws = [b'GET /?x=k%05d HTTP/1.1\r\nHost: default.test\r\n\r\n' % i for i in range(22000)]
    assert many_requests(fport, raws, conns=8) == len(raws)
    doc = get_json(sport)
    assert doc['sharedZones']['droppedNodes']['zoneFull'] > 0, 'the zone is not full'
    entries = len(doc['filterZones']['x'])
    # filter entries leave the zone's last eighth to configured entries, and
    # up to 1/64 of the pages wait in the graveyard after evictions
    assert entries > 13500
    return n, sport, entries


def curl(port, path, *extra):
    return ['curl', '-s', '-o', '/dev/null', '--max-time', '120', *extra,
            'http://127.0.0.1:%d%s' % (port, path)]


@pytest.mark.parametrize('fmt', ['json', 'prometheus'])
def test_concurrent_renders_of_a_full_zone_are_bounded(full_zone, fmt):
    n, sport, entries = full_zone
    path = '/status/format/' + fmt
    worker = n.worker_pids()[0]
    took, resp = scrape(sport, path)
    head, body = dechunk(resp)
    assert head.startswith(b'HTTP/1.1 200')
    assert body.endswith(b'\n')
    assert body.count(b'nginx_vts_filter_requests_total{' if fmt == 'prometheus'
                      else b'"requestCounter"') >= entries
    size = len(body)
    base = rss_kb(worker)

    stalled = []
    for _ in range(2):          # clients that never read: their renders must wait
        s = socket.create_connection(('127.0.0.1', sport), timeout=120)
        s.sendall(b'GET %s HTTP/1.1\r\nHost: status.test\r\n\r\n' % path.encode())
        stalled.append(s)
    # separate processes: the client's own scheduling is not what is measured
    renders = [subprocess.Popen(curl(sport, path, '-w', '%{http_code} %{size_download}'),
                                stdout=subprocess.PIPE, text=True) for _ in range(RENDERS)]
    plain, peak = [], base
    while any(p.poll() is None for p in renders):
        peak = max(peak, rss_kb(worker))
        r = subprocess.run(curl(sport, '/plain', '-w', '%{http_code} %{time_total}'),
                           capture_output=True, text=True, timeout=130)
        code, secs = r.stdout.split()
        assert code == '200'
        plain.append(float(secs))
        peak = max(peak, rss_kb(worker))
    for s in stalled:
        s.close()

    for p in renders:
        code, got = p.communicate()[0].split()
        assert code == '200'
        assert abs(int(got) - size) < size * 0.05, (got, size)
    grown_mb = (peak - base) / 1024
    print('\n%s, full zone: %d entries, %.1f MB, one render %.2f s; %d concurrent: '
          'worker RSS %+.1f MB (peak %.1f MB), plain requests: %d, median %.1f ms, max %.1f ms'
          % (fmt, entries, size / 1e6, took, RENDERS, grown_mb, peak / 1024, len(plain),
             statistics.median(plain) * 1000, max(plain) * 1000))
    # at most 4 views run at once in a worker, each sending 64 KB pieces; no
    # view copies every entry's counters (the Prometheus one read ~3 KB an
    # entry into a copy, ~50 MB a render here, until it read the zone
    # itself).  Before: 20 whole documents and copies held at once, +1 GB.
    # (ASan's allocator keeps up to 256 MB of freed memory in quarantine)
    limit = 100 + (256 if IS_ASAN else 0)
    assert grown_mb < limit, 'worker RSS grew by %.1f MB' % grown_mb
    assert plain, "no plain request overlapped the renders"
    # a plain request waits for time slices, not for whole renders (before:
    # up to 20 whole renders, 19-29 s)
    slow = [x for x in plain if x > 0.1]
    # a few outliers allowed (at most 10 %, at least 2): 20 curl processes and
    # nginx share 2 cores here, and scheduling alone delays a request now and
    # then; none may wait for a whole render (1 s)
    assert statistics.median(plain) < 0.1 and len(slow) <= max(2, len(plain) // 10) \
        and max(plain) < 1.0, ['%.0f ms' % (x * 1000) for x in plain]
