"""Checks of what nginx outputs: Prometheus text (promtool), JSON (strict:
valid UTF-8, no duplicate keys), the health checker's text status page."""
import json
import re
import shutil
import subprocess

from support.net import http_get


def promtool(text):
    """`promtool check metrics` on text (str or bytes): (ok, output).  Lint
    problems fail it too (promtool exits 3 on them); promtool is required."""
    exe = shutil.which('promtool')
    assert exe, 'promtool (Debian package prometheus) is required'
    data = text.encode() if isinstance(text, str) else bytes(text)
    p = subprocess.run([exe, 'check', 'metrics'], input=data, capture_output=True, timeout=60)
    return p.returncode == 0, (p.stdout + p.stderr).decode(errors='replace')


def _no_duplicate_keys(pairs):
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise ValueError('duplicate JSON key %r' % (k,))
        seen[k] = v
    return seen


def parse_json(data):
    """json.loads that also rejects invalid UTF-8 and duplicate object keys
    (ValueError for each)."""
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode('utf-8')
    return json.loads(data, object_pairs_hook=_no_duplicate_keys)


def get_json(port, path, host='127.0.0.1', headers=None, timeout=5):
    """GET path and parse the 200 answer strictly."""
    st, _, body = http_get(host, port, path, headers=headers, timeout=timeout)
    assert st == 200, (st, body[:500])
    return parse_json(body)


def status_page(port, host='127.0.0.1', path='/status'):
    """The text of hc.status_page() served at path (asserts a 200)."""
    st, _, body = http_get(host, port, path)
    assert st == 200, (st, body[:500])
    return body.decode()


# A peer line of the status page: 8 spaces, the name, UP or DOWN, nothing else.
PEER_LINE = re.compile(r'^ {8}(\S+) (UP|DOWN)$')


def status_peers(text):
    """{upstream: [(peer, state)]} from a status page's text."""
    out, cur = {}, None
    for line in text.splitlines():
        m = re.match(r'^Upstream (\S+)', line)
        if m:
            cur = out.setdefault(m.group(1), [])
            continue
        m = PEER_LINE.match(line)
        if m and cur is not None:
            cur.append((m.group(1), m.group(2)))
    return out


def peer_states_in(text):
    """{peer: 'UP'|'DOWN'} over every upstream of a status page's text."""
    return {peer: state for peers in status_peers(text).values() for peer, state in peers}


def peer_states(port, host='127.0.0.1'):
    """{peer: 'UP'|'DOWN'} from the status page at port."""
    return peer_states_in(status_page(port, host))
