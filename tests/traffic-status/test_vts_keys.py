"""traffic-status: rendered keys are unique and reversible (issue 13, case 2).

A Host header can hold `*` (the sum key), invalid UTF-8 bytes, control
characters and backslashes; no two distinct hosts may render alike, and none
may render as the sum key, in JSON or in Prometheus."""
import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request

import pytest

from conftest import free_port, wait_for
from support.probes import promtool
from vts_util import HOST_FROM_HEADER, counted_and_status, get, hostile_host_request, many_requests

# (nginx lower-cases a Host; since 1.29 it refuses most of these bytes in the
# Host header itself, so they come in X-Host: vts_util.HOST_FROM_HEADER)
HOSTS = [b'*', b'\xff.t', b'\xfe.t', b'\xc0.t', b'\\xff.t', b'\\\\xff.t', b'\xef\xbf\xbd.t', b'?.t',
         b'ok.t', b'caf\xc3\xa9.t', b'q"uote.t', b'\\x2a', b'%2a']
PER_HOST = 3


def no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    dup = {k for k in keys if keys.count(k) > 1}
    assert not dup, 'duplicate JSON keys: %r' % dup
    return dict(pairs)


def decode_name(s):
    """The module's reversible rendering back to the Host's bytes."""
    out, i = bytearray(), 0
    while i < len(s):
        if s.startswith('\\\\', i):
            out += b'\\'
            i += 2
        elif s.startswith('\\x', i):
            out.append(int(s[i + 2:i + 4], 16))
            i += 4
        else:
            out += s[i].encode()
            i += 1
    return bytes(out)


def series(text):
    """{(name, labels): value} of a text-format page, asserting no series twice."""
    seen = {}
    for line in text.splitlines():
        if not line or line.startswith('#'):
            continue
        key, value = line.rsplit(' ', 1)
        assert key not in seen, 'duplicate series: ' + key
        seen[key] = float(value)
    return seen


@pytest.fixture
def hostile(nginx_factory):
    fport, sport = free_port(), free_port()
    nginx_factory(counted_and_status(fport, sport, http="""
    vhost_traffic_status_zone shared:vts:4m;
    vhost_traffic_status_filter_by_host on;""", counted=HOST_FROM_HEADER),
                  wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    raws = [hostile_host_request(h) for h in HOSTS for _ in range(PER_HOST)]
    assert many_requests(fport, raws) == len(raws)
    return sport, len(raws)


def test_json_keys_are_unique_and_reversible(hostile):
    sport, sent = hostile
    st, _, body = get(sport, '/status/format/json')
    assert st == 200
    doc = json.loads(body.decode('utf-8'), object_pairs_hook=no_duplicates)
    zones = doc['serverZones']
    assert zones['*']['requestCounter'] == sent
    hosts = {decode_name(k): z['requestCounter'] for k, z in zones.items() if k != '*'}
    assert hosts == {h: PER_HOST for h in HOSTS}
    assert sum(hosts.values()) == sent


def test_prometheus_series_are_unique_and_sum_is_total(hostile):
    sport, sent = hostile
    st, _, body = get(sport, '/status/format/prometheus')
    assert st == 200
    text = body.decode('utf-8')
    ok, out = promtool(text)
    assert ok, out[:2000]
    s = series(text)
    # no code="total" (v0.2.7): the sum over code is the request count
    assert not any('code="total"' in k for k in s)
    assert sum(v for k, v in s.items()
               if k.startswith('nginx_vts_server_requests_total{host="*",')) == sent
    per_host = {}
    for key, v in s.items():
        m = re.fullmatch(r'nginx_vts_server_requests_total\{host="((?:[^"\\]|\\.)*)",code="[1-5]xx"\}', key)
        if m and m.group(1) != '*':
            # the text format's own escapes first, then ours
            label = re.sub(r'\\(.)', lambda x: {'n': '\n'}.get(x.group(1), x.group(1)), m.group(1))
            per_host[decode_name(label)] = per_host.get(decode_name(label), 0) + v
    assert per_host == {h: PER_HOST for h in HOSTS}



@pytest.fixture
def prometheus_server(tmp_path):
    """A real Prometheus (Debian's package) on loopback: start(target) scrapes
    target every second; query(expr) returns the instant vector."""
    exe = shutil.which('prometheus')
    if not exe:
        pytest.skip('prometheus (Debian package) is not installed')
    procs = []

    def start(target, path):
        port = free_port()
        conf = tmp_path / 'prometheus.yml'
        conf.write_text(f"""
global: {{ scrape_interval: 1s, scrape_timeout: 1s }}
scrape_configs:
  - job_name: vts
    metrics_path: {path}
    static_configs: [{{ targets: ['{target}'] }}]
""")
        p = subprocess.Popen([exe, '--config.file=%s' % conf, '--storage.tsdb.path=%s' % (tmp_path / 'tsdb'),
                              '--web.listen-address=127.0.0.1:%d' % port],
                             stdout=subprocess.DEVNULL, stderr=open(tmp_path / 'prometheus.log', 'wb'))
        procs.append(p)

        def query(expr):
            url = 'http://127.0.0.1:%d/api/v1/query?%s' % (port, urllib.parse.urlencode({'query': expr}))
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())['data']['result']
        return query

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=30)


def test_a_real_prometheus_stores_the_true_total(hostile, prometheus_server):
    """Issue 13, case 2: a scrape by a real Prometheus server stored 1 as the
    sum where the true total was 51 (duplicate series): now the stored sum is
    the number of requests sent, and every host is its own series."""
    sport, sent = hostile
    query = prometheus_server('127.0.0.1:%d' % sport, '/status/format/prometheus')

    def scraped():
        try:
            # VTS v0.2.7: no code="total" series; a host's total is the sum over code
            return query('sum by (host) (nginx_vts_server_requests_total)')
        except OSError:
            return None
    result = wait_for(scraped, timeout=60, what='a first scrape stored')
    by_host = {r['metric']['host']: float(r['value'][1]) for r in result}
    assert by_host.pop('*') == sent
    assert len(by_host) == len(HOSTS)
    assert set(by_host.values()) == {PER_HOST}
    up = query('up{job="vts"}')
    assert [float(r['value'][1]) for r in up] == [1.0]
