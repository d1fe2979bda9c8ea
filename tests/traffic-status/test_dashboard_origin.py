"""traffic-status: the dashboard talks to its own origin only (issue 26,
item 6).

nginx merges slashes, so `//traffic.evil.example/` on the monitoring port
reaches a prefix location `/traffic` and serves the dashboard.  Its script
used to build its data URLs from location.pathname as is:
`//traffic.evil.example/format/json` is protocol-relative, so the real
dashboard polled (and showed) another host's data.  Now every URL is a path
of the page's own origin, checked against location.origin, and the page
carries a Content-Security-Policy: its inlined script and style blocks run by
their hashes, nothing else inline, connections to 'self' only."""
import re
import shutil

import pytest

from cdp import Browser
from conftest import conf_wrap, free_port, http_get, wait_for

pytestmark = pytest.mark.skipif(shutil.which('chromium') is None,
                                reason='needs Debian chromium')


def conf(sport):
    return conf_wrap(f"""
    vhost_traffic_status_zone;
    server {{
        listen 127.0.0.1:{sport};
        location /traffic {{
            vhost_traffic_status_display;
            vhost_traffic_status_display_format html;
        }}
    }}
    """)


def csp_of(sport, path):
    st, headers, body = http_get('127.0.0.1', sport, path)
    assert st == 200 and headers['content-type'].startswith('text/html'), (st, headers)
    return headers.get('content-security-policy'), body.decode()


def test_html_carries_a_content_security_policy(nginx_factory):
    sport = free_port()
    nginx_factory(conf(sport), wait_ports=[('127.0.0.1', sport)])
    csp, page = csp_of(sport, '/traffic')
    assert csp, 'no Content-Security-Policy on the dashboard'
    rules = dict((d.split(None, 1) + [''])[:2] for d in
                 (p.strip() for p in csp.split(';')) if d)
    assert rules['default-src'] == "'self'" and rules['connect-src'] == "'self'", csp
    assert rules['base-uri'] == "'none'" and rules['frame-ancestors'] == "'none'", csp
    for d in ('script-src', 'style-src'):
        assert 'unsafe' not in rules[d] and '*' not in rules[d], csp
        assert re.fullmatch(r"('sha256-[A-Za-z0-9+/=]{44}' ?)+", rules[d]), csp
    # every inline block is hashed: as many hashes as blocks
    assert len(rules['script-src'].split()) == page.count('<script>')
    assert len(rules['style-src'].split()) == page.count('<style>')
    assert csp_of(sport, '/traffic/format/html')[0] == csp
    # the other formats are not pages: no policy needed
    st, headers, _ = http_get('127.0.0.1', sport, '/traffic/format/json')
    assert st == 200 and 'content-security-policy' not in headers


@pytest.mark.parametrize('path', ['//traffic.evil.example/', '///traffic.evil.example//',
                                  '/traffic/format/html', '/traffic'])
def test_dashboard_requests_only_its_own_origin(nginx_factory, tmp_path, path):
    sport = free_port()
    nginx_factory(conf(sport), wait_ports=[('127.0.0.1', sport)])
    origin = 'http://127.0.0.1:%d' % sport
    b = Browser(tmp_path)
    try:
        b.call('Network.enable')
        b.navigate(origin + path)
        try:
            wait_for(lambda: b.eval("document.body.getAttribute('data-updates')|0") >= 2,
                     timeout=15, what='two polls of its own data')
        except AssertionError:
            pass                    # (said below, after what it asked)
        asked = [e['params']['request']['url'] for e in b.events
                 if e['method'] == 'Network.requestWillBeSent']
        foreign = [u for u in asked if not u.startswith(origin + '/')]
        assert not foreign, 'the page asked another origin: %s' % foreign
        polled = [u for u in asked if '/format/json' in u]
        assert polled and all(re.match(re.escape(origin) + r'/traffic[^/]*/format/json\?', u)
                              for u in polled), polled
        assert b.eval("document.body.getAttribute('data-updates')|0") >= 2
        assert b.console_errors() == []
    finally:
        b.close()
