"""The dashboard of the default config (conf/nginx.conf, `/traffic` on :18080)
in headless Chromium, driven over the DevTools protocol (cdp.py).

The bundle is started as is (`sbin/nginx -p <copy>`) in a network namespace
of its own, so its fixed ports (8080, 18080, 18081) never meet another run's,
and the browser, also inside, can reach nothing but loopback: the page works
offline.  Asserted: no console errors; traffic and health side by side per
peer; charts that move with traffic (DOM and screenshot pixels); a killed demo
backend shows DOWN with the checker's reason within the checker's bound, and
a state-change marker on its chart; no horizontal page scroll at 1280x800
and at a phone width.  Screenshots are kept as test artifacts
($NP_ARTIFACTS, else dist/test-artifacts/)."""
import ctypes
import os
import pathlib
import shutil
import subprocess
import threading
import time

import pytest

from cdp import CHROMIUM, Browser, png_pixels
from conftest import ROOT, Nginx, copy_bundle, http_get, port_open, wait_for
from support.probes import parse_json

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason='needs Debian chromium')

PROXY, STATUS, CONTROL = 8080, 18080, 18081
FOO = ['127.0.1.11:8080', '127.0.1.12:8080']
BAR = ['127.0.2.11:8080', '127.0.2.12:8080']
# foo's checker: interval 2s, timeout 1s, fall 3 -> DOWN after at most
# 3 intervals + a timeout + the interval the round may start late, and the
# page sees it at its next poll (1s)
DOWN_BOUND = 3 * 2 + 1 + 2 + 1
CLONE_NEWNET = 0x40000000


@pytest.fixture
def own_netns():
    """Run this test (and what it starts) in a new network namespace with
    only loopback; back to the original one at teardown."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open('/proc/self/ns/net', os.O_RDONLY)
    if libc.unshare(CLONE_NEWNET) != 0:
        os.close(home)
        if any(port_open('127.0.0.1', p) for p in (PROXY, STATUS, CONTROL)):
            pytest.skip('no network namespace and the default ports are taken')
        yield
        return
    try:
        subprocess.run(['ip', 'link', 'set', 'lo', 'up'], check=True)
        yield
    finally:
        assert libc.setns(home, CLONE_NEWNET) == 0, ctypes.get_errno()
        os.close(home)


@pytest.fixture
def default_nginx(own_netns, tmp_path):
    n = Nginx(copy_bundle(tmp_path / 'bundle'))
    r = n.run()                                  # -p only: the default conf/nginx.conf
    assert r.returncode == 0, r.stderr + n.error_log
    try:
        for port in (PROXY, STATUS, CONTROL):
            wait_for(lambda: port_open('127.0.0.1', port), what='port %d' % port)
        yield n
    finally:
        n.stop()
        for marker in ('exited on signal', 'AddressSanitizer', 'runtime error:'):
            assert marker not in n.error_log + n.sanitizer_reports()


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path)
    yield b
    b.close()


def health():
    st, headers, body = http_get('127.0.0.1', STATUS, '/traffic/health.json')
    assert st == 200 and headers['content-type'].startswith('application/json')
    return parse_json(body)


def peer_health(doc, upstream, name):
    return next(p for p in doc['upstreams'][upstream]['peers'] if p['name'] == name)


def keep(shot):
    """Copy a screenshot to the artifacts folder; return where it went."""
    dest = pathlib.Path(os.environ.get('NP_ARTIFACTS') or ROOT / 'dist' / 'test-artifacts')
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, dest / shot.name)
    print('\nscreenshot: %s (test copy: %s)' % (dest / shot.name, shot))
    return dest / shot.name


CARD = 'document.querySelector(\'.card[data-card=peer][data-upstream="%s"][data-key="%s"]\')'


def card_state(b, upstream, peer):
    """What the page shows for one peer: state, reason, markers, chart line."""
    return b.eval("""(function () {
      var c = %s; if (!c) { return null; }
      var rps = c.querySelector('svg[data-series=rps] path.l-rps');
      var r = c.querySelector('.card-reason');
      var row = document.querySelector('table[data-upstream="%s"] tr[data-peer="%s"]');
      return {state: c.getAttribute('data-state'), badge: c.querySelector('.badge').textContent,
              reason: r ? r.textContent : '', why: r ? r.getAttribute('data-reason') : '',
              info: c.querySelector('.card-info').textContent,
              markers: Array.prototype.map.call(c.querySelectorAll('svg[data-series=rps] .marker'),
                                                function (m) { return m.getAttribute('data-to'); }),
              rpsLast: rps ? parseFloat(rps.getAttribute('data-last') || '0') : null,
              points: rps ? parseInt(rps.getAttribute('data-points'), 10) : 0,
              rowState: row ? row.getAttribute('data-state') : null,
              rowFailure: row ? row.querySelector('td.reason').textContent : null,
              updates: parseInt(document.body.getAttribute('data-updates') || '0', 10),
              health: document.body.getAttribute('data-health')};
    })()""" % (CARD % (upstream, peer), upstream, peer))


def chart_pixels_above_floor(b, tmp_path, upstream, peer, name):
    """Screenshot the peer's req/s chart; count line-blue pixels above its
    bottom fifth (where a zero rate is drawn)."""
    rect = b.eval("""(function () {
      var s = %s.querySelector('svg[data-series=rps]');
      s.scrollIntoView({block: 'center'});
      var r = s.getBoundingClientRect();
      return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height};
    })()""" % (CARD % (upstream, peer)))
    shot = tmp_path / name
    w, h, rows = png_pixels(b.screenshot(shot, clip=rect))
    return sum(1 for y in range(int(h * 0.8)) for (r, g, bl) in rows[y]
               if bl > 150 and bl > r + 60 and bl > g + 40), shot


def send_traffic(path, seconds, per_second=20):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        http_get('127.0.0.1', PROXY, path)
        time.sleep(1 / per_second)


def test_dashboard_of_the_default_config(default_nginx, browser, tmp_path):
    wait_for(lambda: all(peer_health(health(), u, p)['state'] == 'UP'
                         for u, peers in (('foo', FOO), ('bar', BAR)) for p in peers),
             timeout=15, what='all peers UP')
    doc = health()
    assert doc['upstreams']['foo']['checked'] is True
    p = peer_health(doc, 'foo', FOO[0])
    assert p['role'] == 'primary' and p['checked'] is True and p['checks'] >= 1
    assert p['last_check'] > 0 and 0 <= p['last_check_duration'] < 1
    assert p['consecutive_failures'] == 0 and p['last_failure'] is None

    b = browser
    b.navigate('http://127.0.0.1:%d/traffic' % STATUS)
    wait_for(lambda: (card_state(b, 'foo', FOO[1]) or {}).get('points', 0) >= 3, timeout=20,
             what='three polls charted')
    first = card_state(b, 'foo', FOO[1])
    assert first['health'] == 'ok' and first['state'] == 'up' and first['badge'] == 'UP'
    assert first['rpsLast'] == 0 and 'checked' in first['info'], first
    for u, peers in (('foo', FOO), ('bar', BAR)):
        for peer in peers:
            assert card_state(b, u, peer)['rowState'] == 'up'
    idle_pixels, idle_shot = chart_pixels_above_floor(b, tmp_path, 'foo', FOO[1], 'chart-idle.png')

    # traffic through foo: the peer's req/s line rises, in the DOM and in pixels
    t = threading.Thread(target=send_traffic, args=('/api/chart', 5))
    t.start()
    wait_for(lambda: card_state(b, 'foo', FOO[1])['rpsLast'] > 2, timeout=15,
             what='req/s of %s charted' % FOO[1])
    t.join()
    busy_pixels, busy_shot = chart_pixels_above_floor(b, tmp_path, 'foo', FOO[1], 'chart-busy.png')
    assert busy_pixels > idle_pixels + 20, (idle_pixels, busy_pixels)
    assert busy_shot.read_bytes() != idle_shot.read_bytes()

    # kill a demo backend: DOWN with the checker's reason, and a marker
    assert http_get('127.0.0.1', CONTROL, '/demo/kill?backend=%s' % FOO[0], method='POST')[0] == 200
    killed, killed_at = time.monotonic(), time.time()
    down = wait_for(lambda: (lambda s: s if s['state'] == 'down' and s['markers'] else None)(
        card_state(b, 'foo', FOO[0])), timeout=DOWN_BOUND + 5, interval=0.2, what='DOWN shown')
    took = time.monotonic() - killed
    assert took <= DOWN_BOUND, took
    assert down['badge'] == 'DOWN' and down['rowState'] == 'down'
    assert down['why'] == 'receive' and 'failed to receive status line from' in down['reason'], down
    assert 'failed to receive status line from' in down['rowFailure'] and down['markers'] == ['DOWN'], down
    p = peer_health(health(), 'foo', FOO[0])
    assert p['state'] == 'DOWN' and p['transitions'] == 1, p
    # (the last failure is rewritten by every failed check, also after DOWN)
    assert killed_at - 1 <= p['since'] <= time.time(), p
    assert killed_at - 1 <= p['last_failure']['time'] <= time.time(), p
    assert p['last_failure']['reason'] == 'receive', p
    assert card_state(b, 'foo', FOO[1])['state'] == 'up'

    # issue 27, item 16: the checker stops counting failures once a peer is
    # DOWN (consecutive_failures 0 while it keeps failing): the page shows
    # the failing streak; a summary of what is wrong opens the page; no
    # cache columns without a cache
    wait_for(lambda: peer_health(health(), 'foo', FOO[0])['checks'] >= p['checks'] + 2,
             timeout=10, what='two more failed checks while DOWN')
    p = peer_health(health(), 'foo', FOO[0])
    assert p['state'] == 'DOWN' and p['consecutive_failures'] == 0 \
        and p['consecutive_successes'] == 0, p
    time.sleep(1.5)                             # the page's next poll
    fails = b.eval("document.querySelector('table[data-upstream=foo] tr[data-peer=\"%s\"] "
                   "td.fails').textContent" % FOO[0])
    assert fails.startswith('failing ') and fails != 'failing 0s', fails
    summary = b.eval("""(function () {
      var s = document.getElementById('summary');
      return s && {first: document.querySelector('main').firstElementChild === s,
                   problems: s.getAttribute('data-problems'), text: s.textContent,
                   kinds: Array.prototype.map.call(s.querySelectorAll('li'),
                                                   function (l) { return l.getAttribute('data-kind'); })};
    })()""")
    assert summary and summary['first'] and summary['problems'] == '1', summary
    assert summary['kinds'] == ['down'] and FOO[0] in summary['text'] \
        and 'failed to receive status line' in summary['text'], summary
    assert b.eval("Array.prototype.some.call(document.querySelectorAll('#serverZones th'), "
                  "function (t) { return t.textContent === 'Hit'; })") is False
    assert b.eval("!!document.querySelector('#cacheZones .empty') && "
                  "!document.querySelector('#cacheZones table')") is True

    # readable at 1280x800 and on a phone: no horizontal page scroll
    shots = []
    for w, h, mobile, name, top in ((1280, 800, False, 'dashboard-1280x800.png', 'document.body'),
                                    (1280, 800, False, 'dashboard-upstreams-1280x800.png',
                                     "document.getElementById('upstreamZones').previousElementSibling"),
                                    (390, 844, True, 'dashboard-phone.png', CARD % ('foo', FOO[0]))):
        b.viewport(w, h, mobile=mobile)
        wait_for(lambda: b.eval('document.documentElement.scrollWidth') <= w, timeout=5,
                 what='page fits %dpx' % w)
        if w == 1280:
            # the upstream tables fit, a failure message shown (no column
            # scrolled out of sight: Weight, In, Out)
            wide = b.eval("""Array.prototype.map.call(document.querySelectorAll(
                '#upstreamZones .tablewrap'), function (t) {
                return [t.scrollWidth, t.clientWidth]; })""")
            assert wide and all(sw <= cw for sw, cw in wide), wide
        else:
            # the summary first, and the first upstream's health within
            # the first screens (before: 1,775 px down, below 6 zone cards)
            tops = b.eval("""(function () {
              function top(e) { return e.getBoundingClientRect().top + scrollY; }
              return [top(document.getElementById('summary')),
                      top(document.querySelector('#upstreamZones tr.peer')),
                      top(document.querySelector('#zoneCharts'))];
            })()""")
            print('\nphone: summary at %d px, first peer row at %d px' % (tops[0], tops[1]))
            assert tops[0] < tops[2] and tops[1] < 1200, tops
        b.eval("(%s).scrollIntoView({block: 'start'})" % top)
        shot = tmp_path / name
        b.screenshot(shot)
        assert shot.stat().st_size > 10000
        shots.append(keep(shot))
    keep(busy_shot)
    assert b.console_errors() == []
