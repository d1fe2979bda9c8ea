"""traffic-status: the HTML page in headless Chromium (Debian's `chromium`).

The page must load offline (no external assets), show the server zones and
the upstream peers with their up/down state, and update after new traffic.
A screenshot is saved and its path printed so a person can look at it
(pytest -s, or the file under the test's tmp dir)."""
import html.parser
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from cdp import Browser
from conftest import ROOT, conf_wrap, free_port, wait_for
from support.net import raw_request
from vts_util import backend_conf, get, req

CHROMIUM = shutil.which('chromium')


def chromium(tmp_path, *args, timeout=90):
    profile = tmp_path / ('profile-%d' % len(list(tmp_path.glob('profile-*'))))
    cmd = [CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
           '--disable-background-networking', '--disable-component-update',
           '--disable-sync', '--no-first-run', '--disable-dev-shm-usage',
           '--user-data-dir=%s' % profile, *args]
    env = dict(os.environ, HOME=str(tmp_path))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


class Cells(html.parser.HTMLParser):
    """Rows of the rendered DOM: data-* attributes of <tr> plus cell texts."""

    def __init__(self):
        super().__init__()
        self.rows, self.cur, self.in_td = [], None, False
        self.attrs_body = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == 'body':
            self.attrs_body = a
        if tag == 'tr':
            self.cur = {'attrs': a, 'cells': []}
            self.rows.append(self.cur)
        if tag == 'td' and self.cur is not None:
            self.in_td = True
            self.cur['cells'].append('')

    def handle_endtag(self, tag):
        if tag == 'td':
            self.in_td = False

    def handle_data(self, data):
        if self.in_td and self.cur is not None:
            self.cur['cells'][-1] += data


def dump_dom(tmp_path, url):
    r = chromium(tmp_path, '--virtual-time-budget=4000', '--dump-dom', url)
    assert r.returncode == 0, r.stderr[-2000:]
    p = Cells()
    p.feed(r.stdout)
    return r.stdout, p


@pytest.mark.skipif(CHROMIUM is None, reason='needs Debian chromium')
def test_html_page_in_chromium(nginx_factory, tmp_path):
    bports = [free_port() for _ in range(4)]
    nginx_factory(backend_conf(bports), name='backend',
                  wait_ports=[('127.0.0.1', p) for p in bports[:2]])
    fport, sport = free_port(), free_port()
    conf = conf_wrap(f"""
    vhost_traffic_status_zone;
    vhost_traffic_status_filter_by_host on;
    upstream app {{
        server 127.0.0.1:{bports[0]};
        server 127.0.0.1:{bports[1]} down;
    }}
    server {{
        listen 127.0.0.1:{fport};
        location / {{ proxy_pass http://app; }}
    }}
    server {{
        listen 127.0.0.1:{sport};
        vhost_traffic_status off;
        location /status {{
            vhost_traffic_status_display;
            vhost_traffic_status_display_format html;
        }}
    }}
    """)
    nginx_factory(conf, name='front', wait_ports=[('127.0.0.1', fport), ('127.0.0.1', sport)])
    for _ in range(3):
        raw_request(fport, req('/', host='shop.example'))

    # the page is self-contained: no external URL anywhere in it
    st, head, body = get(sport, '/status')
    assert st == 200 and 'text/html' in head
    page = body.decode()
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page)

    url = 'http://127.0.0.1:%d/status' % sport
    dom, cells = dump_dom(tmp_path, url)
    assert int(cells.attrs_body.get('data-updates', '0')) >= 1, dom[-3000:]
    # no health checker here: the traffic part alone, and no error
    assert cells.attrs_body.get('data-health') == 'absent'
    assert 'class="err"' not in dom
    zones = {r['attrs'].get('data-zone'): r['cells'] for r in cells.rows
             if r['attrs'].get('data-zone')}
    assert zones['shop.example'][1] == '3', zones
    assert '*' in zones
    peers = {r['attrs']['data-peer']: r for r in cells.rows if r['attrs'].get('data-peer')}
    up = peers['127.0.0.1:%d' % bports[0]]
    down = peers['127.0.0.1:%d' % bports[1]]
    assert up['attrs']['data-state'] == 'up' and up['cells'][1].startswith('up')
    assert down['attrs']['data-state'] == 'down' and down['cells'][1].startswith('down')
    assert up['cells'][2] == '3'

    # new traffic shows up on the next load
    for _ in range(4):
        raw_request(fport, req('/', host='shop.example'))
    raw_request(fport, req('/', host='new.example'))
    dom, cells = dump_dom(tmp_path, url)
    zones = {r['attrs'].get('data-zone'): r['cells'] for r in cells.rows
             if r['attrs'].get('data-zone')}
    assert zones['shop.example'][1] == '7' and zones['new.example'][1] == '1'

    # the page polls by itself: within one load it refreshes several times
    assert int(cells.attrs_body['data-updates']) >= 2

    # the same page driven live: no console error, the cards and charts of
    # the peers say they are not health-checked
    b = Browser(tmp_path)
    try:
        b.navigate(url)
        wait_for(lambda: b.eval("document.body.getAttribute('data-updates')|0") >= 3,
                 timeout=20, what='three polls')
        cards = b.eval("""Array.prototype.map.call(document.querySelectorAll(
            '.card[data-card=peer]'), function (c) { return [c.getAttribute('data-key'),
            c.getAttribute('data-state'), c.querySelector('.card-info').textContent,
            c.querySelectorAll('svg').length]; })""")
        assert sorted(cards) == sorted([['127.0.0.1:%d' % bports[0], 'up', 'not health-checked', 3],
                                        ['127.0.0.1:%d' % bports[1], 'down', 'not health-checked', 3]])
        assert b.eval("document.querySelectorAll('.card[data-card=zone]').length") >= 3
        assert b.console_errors() == []
    finally:
        b.close()

    shot = tmp_path / 'vts-status.png'
    r = chromium(tmp_path, '--virtual-time-budget=3000', '--window-size=1400,900',
                 '--screenshot=%s' % shot, url)
    assert r.returncode == 0 and shot.exists() and shot.stat().st_size > 5000, r.stderr[-2000:]
    keep = os.environ.get('NP_SCREENSHOT_DIR')
    if keep:
        pathlib.Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, pathlib.Path(keep) / shot.name)
    print('\nscreenshot of the traffic-status page: %s' % shot)


def test_committed_page_is_generated_from_html_sources(tmp_path):
    """vts_html_page.h is what gen_html.py makes of html/ (inlined, no links)."""
    out = tmp_path / 'page.h'
    here = ROOT / 'modules' / 'traffic-status'
    subprocess.run([sys.executable, str(here / 'gen_html.py'), str(out)], check=True)
    assert out.read_text() == (here / 'vts_html_page.h').read_text(), \
        'run modules/traffic-status/gen_html.py after editing html/'
    text = out.read_text()
    assert '<script src=' not in text and 'stylesheet' not in text and '<style>' in text
