"""traffic-status: clients that never read do not blind monitoring (issue 26,
item 3).

Outputs far larger than the socket buffers (a small sndbuf on the status
listen, a small receive buffer on the client).  8 clients per worker ask for
the Prometheus page and never read: before, the first 4 held the worker's 4
render slots until send_timeout (60 s) and every other scrape waited behind
them.  Now a client that takes nothing for a short while (VTS_STALL_MSEC)
gives its slot up, its view paused without one: a scrape read at full speed
is answered within 1 s, again and again; and a stalled client that reads on
later still gets its whole document."""
import socket
import time

from conftest import conf_wrap, free_port, wait_for
from vts_util import dechunk, keepalive_requests, read_all

STALLED = 8         # per worker (twice VTS_RENDERS)
KEYS = 600          # filter entries: ~1 MB of Prometheus text


def conf(fport, sport):
    return conf_wrap(f"""
    vhost_traffic_status_zone shared:vts:8m;
    server {{
        listen 127.0.0.1:{fport};
        server_name default.test;
        vhost_traffic_status_filter_by_set_key $arg_k keys;
        location / {{ return 200 "ok\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{sport} sndbuf=8k;
        server_name status.test;
        vhost_traffic_status off;
        location /status {{ vhost_traffic_status_display; }}
    }}
""")


def stalled_client(sport):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(60)
    s.connect(('127.0.0.1', sport))
    s.sendall(b'GET /status/format/prometheus HTTP/1.1\r\nHost: status.test\r\n'
              b'Connection: close\r\n\r\n')
    return s


def scrape(sport, path, limit=10):
    """(seconds, response) of one request read at full speed; None as the
    time when it did not complete within `limit`."""
    t0 = time.monotonic()
    with socket.create_connection(('127.0.0.1', sport), timeout=limit) as s:
        s.sendall(b'GET %s HTTP/1.1\r\nHost: status.test\r\nConnection: close\r\n\r\n'
                  % path.encode())
        try:
            resp = read_all(s)
        except socket.timeout:
            return None, b''
    return time.monotonic() - t0, resp


def test_stalled_readers_do_not_block_scrapes(nginx_factory):
    fport, sport = free_port(), free_port()
    n = nginx_factory(conf(fport, sport), workers=1,
                      wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    raws = [b'GET /?k=key%04d HTTP/1.1\r\nHost: default.test\r\n\r\n' % i for i in range(KEYS)]
    assert keepalive_requests(fport, raws) == KEYS
    took, resp = scrape(sport, '/status/format/prometheus')
    head, whole = dechunk(resp)
    assert head.startswith(b'HTTP/1.1 200') and len(whole) > 500000, len(whole)

    stalled = [stalled_client(sport) for _ in range(STALLED)]
    # at once, behind the 8 (two rounds of 4 slots), then again and again
    times = []
    for path in ['/status/format/prometheus', '/status/format/json'] * 3:
        took, resp = scrape(sport, path)
        times.append(took)
        assert took is not None, ('a scrape with %d stalled readers got no answer in 10 s '
                                  '(before: waits for send_timeout)' % STALLED)
        head, body = dechunk(resp)
        assert head.startswith(b'HTTP/1.1 200') and len(body) > 100000
    print('\n%d stalled readers: scrapes took %s' % (
        STALLED, ', '.join('%.0f ms' % (t * 1000) for t in times)))
    assert max(times) < 1.0, times

    # a stalled client that reads on gets its whole document
    for s in stalled:
        got = read_all(s)
        s.close()
        head, body = dechunk(got)
        assert head.startswith(b'HTTP/1.1 200') and body.endswith(b'\n'), got[-200:]
        assert len(body) > 500000 and body.count(b'nginx_vts_filter_requests_total{') \
            == whole.count(b'nginx_vts_filter_requests_total{'), len(body)
    assert 'render given up' not in n.error_log
