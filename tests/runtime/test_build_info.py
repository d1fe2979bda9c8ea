"""The default config's /metrics has nginx_portable_build_info with the running
binary's versions: they match `nginx -V`, the binary's LuaJIT, the lock's
lua-nginx-module and the bundle's VERSION (nothing here names a version)."""
import re
import subprocess

from conftest import BUNDLE, ROOT
from support.probes import promtool
from test_default_config import bundle_copy, metrics  # noqa: F401 (fixture)
from support.lock import locked_version

LABELS = ('version', 'nginx', 'openssl', 'luajit', 'lua_nginx_module')


def build_info(text):
    m = re.search(r'^nginx_portable_build_info\{([^}]*)\} 1$', text, re.M)
    assert m, text[-2000:]
    labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1)))
    assert tuple(labels) == LABELS, labels
    return labels


def test_build_info_matches_the_binary(bundle_copy, tmp_path):
    n = bundle_copy()
    text = metrics()
    ok, why = promtool(text)
    assert ok, why
    assert '# TYPE nginx_portable_build_info gauge' in text
    labels = build_info(text)
    v = subprocess.run([n.binary, '-V'], capture_output=True, text=True, timeout=30).stderr
    assert 'nginx version: nginx/%s\n' % labels['nginx'] in v, v
    # "built with OpenSSL X ..." and, when the library loaded differs, "(running with OpenSSL Y ...)"
    built = re.search(r'built with OpenSSL (\S+)', v).group(1)
    running = re.search(r'running with OpenSSL (\S+)', v)
    assert labels['openssl'] == (running.group(1) if running else built), (labels, v)
    # the binary knows its number (ngx_lua_version), not a tag's rc suffix
    assert labels['lua_nginx_module'] == re.sub(r'rc\d+$', '', locked_version('lua-nginx-module'))
    assert b'LuaJIT %s\0' % labels['luajit'].encode() in (BUNDLE / 'sbin' / 'nginx').read_bytes()
    assert labels['version'] == (ROOT / 'VERSION').read_text().strip() == (BUNDLE / 'VERSION').read_text().strip()
