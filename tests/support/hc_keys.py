"""The health checker's shm keys, as the shipped Lua module builds them.

Tests must not spell shm keys themselves (their layout is the checker's own
business): they ask `resty.upstream.healthcheck.keys` from the bundle under
test.  Each distinct question starts the bundle's nginx once, in the
foreground, with an init_by_lua_block that prints the answer and exits
before anything listens (init_by_lua does not run under `nginx -t`);
answers are cached for the session.

    hc_key('round_lock', 'foo')                    # a per-upstream key
    hc_key('state', 'foo', 'primary', '127.0.0.1:80')  # a per-peer key
    hc_key_prefix('failures')                      # what every such key starts with

Kinds are the full-word names of keys.lua (state, consecutive_failures, ...,
version, round_lock, next_round, peer_list); roles are 'primary' / 'backup'.
"""
import atexit
import functools
import shutil
import tempfile

from conftest import Nginx, make_prefix

_MARK = 'HC_KEY='

_CONF = '''
daemon off;
master_process off;
error_log stderr;
pid logs/hc-keys.pid;
events {}
http {
    init_by_lua_block {
        local keys = require "resty.upstream.healthcheck.keys"
        io.stdout:write("%s", %s, "\\n")
        io.stdout:flush()
        os.exit(0)
    }
}
'''


def _lua_str(s):
    """A Lua string literal for any text (decimal escapes: no quoting rules)."""
    return '"' + ''.join('\\%d' % b for b in s.encode()) + '"'


@functools.lru_cache(maxsize=None)
def _prefix():
    d = tempfile.mkdtemp(prefix='hc-keys-')
    atexit.register(shutil.rmtree, d, True)
    return make_prefix(d)


@functools.lru_cache(maxsize=None)
def _ask(lua_expr):
    """The value of a Lua expression (with `keys` in scope), as text."""
    prefix = _prefix()
    (prefix / 'conf' / 'nginx.conf').write_text(_CONF % (_MARK, lua_expr))
    r = Nginx(prefix).run(timeout=60)
    for line in r.stdout.splitlines():
        if line.startswith(_MARK):
            return line[len(_MARK):]
    raise AssertionError('keys module gave no answer for %s:\n%s' % (lua_expr, r.stderr))


def hc_key(kind, upstream, role=None, peer=None):
    """The shm key of `kind` for an upstream, or for one of its peers."""
    if role is None:
        return _ask('keys.upstream_key(%s, %s)' % (_lua_str(kind), _lua_str(upstream)))
    return _ask('keys.peer_key(%s, %s, keys.ROLE[%s], %s)' % (
        _lua_str(kind), _lua_str(upstream), _lua_str(role), _lua_str(peer)))


def hc_key_prefix(kind):
    """What every shm key of `kind` starts with."""
    return _ask('keys.prefix(%s)' % _lua_str(kind))
