"""Bounded random tests (FUZZ_SECONDS, default 30 s each; FUZZ_SEED to replay)
of the two places where client bytes reach our C++ code: hostile Host
headers (traffic status keyed by Host, filter keys from headers) and the
traffic-status control endpoint's query parsing (/traffic/control?cmd=&group=&zone=).

Every response must be HTTP; control answers must be valid JSON; after each
batch no worker has died (same pids), /traffic/format/json is valid JSON and
/metrics passes promtool; at the end the error log has no crash, sanitizer
report, [alert] or [crit]."""
import os
import random
import time
import urllib.parse

import pytest

from conftest import conf_wrap, free_port, http_get, wait_for
from support.net import raw_request
from support.probes import parse_json, promtool

FUZZ_SECONDS = float(os.environ.get('FUZZ_SECONDS', '30'))
SEED = int(os.environ.get('FUZZ_SEED', str(int(time.time()))))
BATCH = 150


def conf(port, bport):
    return conf_wrap("""
    lua_shared_dict healthcheck 1m;
    lua_socket_log_errors off;
    vhost_traffic_status_zone shared:vts:2m;
    vhost_traffic_status_filter_by_host on;
    vhost_traffic_status_filter_max_node 200;
    vhost_traffic_status_histogram_buckets 0.005 0.05 0.5;
    upstream foo { server 127.0.0.1:%d; server 127.0.0.1:%d backup; }
    init_worker_by_lua_block {
        local ok, err = require("resty.upstream.healthcheck").spawn_checker({
            shm = "healthcheck", upstream = "foo", type = "http",
            http_req = "GET /health HTTP/1.0\\r\\nHost: foo\\r\\n\\r\\n",
            interval = 500, timeout = 500, fall = 2, rise = 2, valid_statuses = {200},
        })
        if not ok then ngx.log(ngx.ERR, "spawn: ", err) end
    }
    server {
        listen 127.0.0.1:%d;
        server_name fuzz.test;
        vhost_traffic_status_filter_by_set_key $http_user_agent agent::$host;
        vhost_traffic_status_filter_by_set_key $arg_k key::*;
        location /p/ { proxy_pass http://foo; }
        location /traffic {
            vhost_traffic_status_display;
            vhost_traffic_status_display_format json;
        }
        location = /metrics {
            default_type text/plain;
            content_by_lua_block {
                local hc = require("resty.upstream.healthcheck")
                local v = ngx.location.capture("/traffic/format/prometheus")
                ngx.print(hc.prometheus_status_page() or "", v.body)
            }
        }
        location / { return 200 "ok\\n"; }
    }
    server {
        listen 127.0.0.1:%d;
        location / { return 200 "backend\\n"; }
    }
""" % (bport, bport, port, bport), workers=2)


# -- generators --------------------------------------------------------------

NASTY = [b'', b'%', b'%00', b'%zz', b'%ff', b'\x00', b'\x7f', b'\xff', b'\xc3\x28', b'\xe2\x82',
         b'\xf0\x9f\x98\x80', b'"', b'\\', b'\\"', b'{', b'}', b'<script>', b'@', b'@@', b'*',
         b'::', b'/', b'..', b'.', b':', b'[', b']', b'[::1]', b'\t', b' ', b'\x1b[31m',
         b'\n', b'\r', b'%0d%0a', b'&', b'=', b'?', b'#', b';', b',', b'\xed\xa0\x80', b'A' * 300]


def rbytes(rnd, n):
    return bytes(rnd.randrange(256) for _ in range(n))


def hostile(rnd, maxlen=64):
    """A hostile byte string built from nasty fragments and random bytes."""
    parts = []
    for _ in range(rnd.randint(0, 6)):
        c = rnd.random()
        if c < 0.4:
            parts.append(rnd.choice(NASTY))
        elif c < 0.7:
            parts.append(rbytes(rnd, rnd.randint(1, maxlen)))
        elif c < 0.9:
            parts.append(bytes(rnd.choice(b'abcXYZ019-._') for _ in range(rnd.randint(1, 20))))
        else:
            parts.append(b'x' * rnd.choice((255, 256, 1023, 1024, 1025, 4000)))
    return b''.join(parts)


def header_safe(b):
    """Bytes that stay inside one header line: no LF (it would end the header
    block early and pipeline the rest as a second request); a bare CR stays
    (nginx answers 400)."""
    return b.replace(b'\n', b' ')


def host_value(rnd):
    c = rnd.random()
    if c < 0.15:
        return b'h%d.example' % rnd.randrange(400)         # many distinct hosts
    if c < 0.25:
        return b'H%d.Example.:%d' % (rnd.randrange(50), rnd.randrange(70000))
    if c < 0.3:
        return b'[::1]:80'
    if c < 0.7:
        # accepted by nginx's host validation (no NUL, '/', '\\', leading
        # dot, ".."), so it reaches the Host-keyed zones: quotes, braces,
        # control characters, invalid UTF-8, very long
        v = bytes(b for b in header_safe(hostile(rnd)) if b not in b'\x00/\\\r .')
        return (v or b'empty') + b'.x'
    return header_safe(hostile(rnd))


def query_value(rnd, choices):
    c = rnd.random()
    if c < 0.5:
        v = rnd.choice(choices)
    elif c < 0.75:
        v = urllib.parse.quote_from_bytes(hostile(rnd), safe=b'').encode()
    else:
        v = hostile(rnd).replace(b' ', b'%20').replace(b'#', b'%23')
    return v


CMDS = [b'status', b'reset', b'delete', b'STATUS', b'', b'status ', b'del']
GROUPS = [b'server', b'filter', b'upstream@alone', b'upstream@group', b'cache', b'*', b'',
          b'upstream@', b'@group', b'upstream@group@x']
ZONES = [b'fuzz.test', b'*', b'', b'foo', b'foo@127.0.0.1', b'agent::fuzz.test@x', b'agent::*',
         b'key::*', b'key::*@', b'@', b'127.0.0.1:1', b'h1.example', b'::nogroups']


def control_path(rnd):
    params = []
    for name, choices in ((b'cmd', CMDS), (b'group', GROUPS), (b'zone', ZONES)):
        r = rnd.random()
        if r < 0.85:
            params.append(name + b'=' + query_value(rnd, choices))
        elif r < 0.92:
            params.append(name)                              # no '='
        if rnd.random() < 0.1:
            params.append(name + b'=' + query_value(rnd, choices))   # repeated
    if rnd.random() < 0.2:
        params.append(query_value(rnd, [b'x=y', b'=', b'&&']))
    rnd.shuffle(params)
    q = b'&'.join(params)
    q = q.replace(b' ', b'%20').replace(b'\r', b'%0d').replace(b'\n', b'%0a')
    return b'/traffic/control?' + q


def other_path(rnd):
    c = rnd.random()
    if c < 0.3:
        return b'/p/' + urllib.parse.quote_from_bytes(rbytes(rnd, 8)).encode()
    if c < 0.5:
        return b'/?k=' + urllib.parse.quote_from_bytes(hostile(rnd), safe=b'').encode()
    if c < 0.7:
        fmt = rnd.choice([b'json', b'jsonp', b'prometheus', b'html', b'xml', b''])
        cb = urllib.parse.quote_from_bytes(hostile(rnd, 16), safe=b'').encode()
        return b'/traffic/format/' + fmt + b'?callback=' + cb
    return b'/x'


def request(rnd):
    control = rnd.random() < 0.5
    path = control_path(rnd) if control else other_path(rnd)
    headers = [b'Host: ' + (b'fuzz.test' if control and rnd.random() < 0.5 else host_value(rnd))]
    if rnd.random() < 0.5:
        headers.append(b'User-Agent: ' + header_safe(hostile(rnd)))
    if rnd.random() < 0.05:
        headers.append(b'Host: ' + host_value(rnd))        # duplicate Host: 400
    return control, (b'GET ' + path + b' HTTP/1.1\r\n' + b'\r\n'.join(headers)
                     + b'\r\nConnection: close\r\n\r\n')


def body_of(resp):
    head, _, body = resp.partition(b'\r\n\r\n')
    if b'transfer-encoding: chunked' in head.lower():
        out, rest = b'', body
        while rest:
            size, _, rest = rest.partition(b'\r\n')
            n = int(size.split(b';')[0], 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    return head, body


def check_outputs(port):
    """Number of server zones; fails on invalid JSON or Prometheus output."""
    st, _, body = http_get('127.0.0.1', port, '/traffic/format/json', headers={'Host': 'c'})
    assert st == 200
    zones = parse_json(body)['serverZones']      # strict: valid UTF-8, no duplicate keys
    # the Host-keyed zones stay under filter_max_node (+ server_name, sum key)
    assert len(zones) <= 200 + 3, len(zones)
    st, _, text = http_get('127.0.0.1', port, '/metrics', headers={'Host': 'c'})
    assert st == 200
    ok, out = promtool(text)
    assert ok, out
    return len(zones)


def test_fuzz_host_headers_and_control_queries(nginx_factory, tmp_path):
    port, bport = free_port(), free_port()
    n = nginx_factory(conf(port, bport), workers=2,
                      wait_ports=[('127.0.0.1', port), ('127.0.0.1', bport)])
    pids = n.worker_pids()
    assert len(pids) == 2
    rnd = random.Random(SEED)
    print('FUZZ_SEED=%d' % SEED)
    deadline = time.monotonic() + FUZZ_SECONDS
    sent = controls = json_checked = 0
    statuses = {}
    max_zones = 0
    while time.monotonic() < deadline:
        for _ in range(BATCH):
            control, raw = request(rnd)
            resp = raw_request(port, raw, timeout=10)
            sent += 1
            assert resp.startswith(b'HTTP/1.1 '), 'seed %d: no HTTP response to %r' % (SEED, raw)
            code = int(resp[9:12])
            statuses[code] = statuses.get(code, 0) + 1
            assert code < 500, 'seed %d: %d for %r:\n%r' % (SEED, code, raw, resp[:2000])
            if control:
                controls += 1
                head, body = body_of(resp)
                if code in (200, 400) and b'application/json' in head.lower():
                    try:
                        parse_json(body)
                    except ValueError as e:
                        raise AssertionError('seed %d: invalid JSON (%s) for %r:\n%r'
                                             % (SEED, e, raw, body[:2000]))
                    json_checked += 1
        assert n.worker_pids() == pids, 'seed %d: a worker died' % SEED
        max_zones = max(max_zones, check_outputs(port))
    print('sent %d requests (%d control, %d JSON answers checked, up to %d server zones): %r'
          % (sent, controls, json_checked, max_zones, statuses))
    assert sent >= BATCH and json_checked > 0
    assert max_zones >= 20          # hostile Hosts did reach the Host-keyed zones
    assert statuses.get(200, 0) > 0 and statuses.get(400, 0) > 0
    # nothing bad in the log (the fixture also checks for crash markers)
    bad = [l for l in n.error_log.splitlines()
           if '[alert]' in l or '[crit]' in l or '[emerg]' in l]
    assert not bad, 'seed %d:\n%s' % (SEED, '\n'.join(bad[:20]))
