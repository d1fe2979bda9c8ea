"""The aarch64 bundle at run time, under qemu-aarch64-static: from two copies
it loads resty.core from each copy's lualib/; ffi.C reaches nginx's and libc's
symbols through the generated table; PCRE2's and LuaJIT's JITs produce and run
arm64 code; and the default config serves in its own network namespace, its
health checker marks a killed demo backend DOWN and back UP, /metrics passes
promtool."""
import re
import subprocess

import pytest

from armutil import SLOW, arm64_only
from conftest import Nginx, conf_wrap, copy_bundle, free_port, http_get, port_open, wait_for
from support.bundle import EXEC_WRAPPER
from support.namespaces import NetNS
from support.probes import peer_states_in, promtool

pytestmark = arm64_only

LUA_INFO = r'''
    server {
        listen 127.0.0.1:%d;
        location = /where {
            content_by_lua_block {
                ngx.say(package.searchpath("resty.core", package.path))
                ngx.say(package.loaded["resty.core"] and "loaded" or "missing")
            }
        }
        location = /ffi {
            content_by_lua_block {
                local ffi = require "ffi"
                ffi.cdef[[ int getpid(void); ]]
                local C = ffi.C
                local ok, sym = pcall(function() return C.ngx_http_lua_ffi_var_get end)
                ngx.say(C.getpid(), " ", ngx.worker.pid(), " ", ok and "ffi-var-get" or sym)
            }
        }
        location = /jit {
            content_by_lua_block {
                -- LuaJIT: a hot loop must become a trace (machine code) and
                -- give the interpreter's answer.
                local ffi = require "ffi"
                local jutil = require "jit.util"
                local function sum(n) local s = 0 for i = 1, n do s = s + i %% 7 end return s end
                jit.flush()
                local traced = sum(300000)
                local status = { jit.status() }
                ngx.say("luajit ", tostring(status[1]), " ", jit.arch, " ", traced,
                        " ", jutil.traceinfo(1) and "trace" or "no-trace")
                jit.off()
                ngx.say("interp ", sum(300000))
                jit.on()
                -- ngx.re with the "j" option, then PCRE2's JIT directly.
                local m = ngx.re.match("abc123def", [[\d+]], "jo")
                ngx.say("ngx.re ", m and m[0] or "nomatch")
                ffi.cdef[[
                    int pcre2_config_8(uint32_t what, void *where);
                    void *pcre2_compile_8(const char *p, size_t n, uint32_t o, int *e, size_t *eo, void *c);
                    int pcre2_jit_compile_8(void *code, uint32_t options);
                    void *pcre2_match_data_create_from_pattern_8(void *code, void *g);
                    int pcre2_jit_match_8(void *code, const char *s, size_t n, size_t off, uint32_t o,
                                          void *md, void *mc);
                    void pcre2_match_data_free_8(void *md);
                    void pcre2_code_free_8(void *code);
                ]]
                local C = ffi.C
                local jit_on = ffi.new("uint32_t[1]")
                C.pcre2_config_8(1, jit_on)                       -- PCRE2_CONFIG_JIT
                local target = ffi.new("char[64]")
                C.pcre2_config_8(2, target)                       -- PCRE2_CONFIG_JITTARGET
                local err, off = ffi.new("int[1]"), ffi.new("size_t[1]")
                local code = C.pcre2_compile_8("b+c", 3, 0, err, off, nil)
                local jc = C.pcre2_jit_compile_8(code, 1)          -- PCRE2_JIT_COMPLETE
                local md = C.pcre2_match_data_create_from_pattern_8(code, nil)
                local rc = C.pcre2_jit_match_8(code, "abbbcd", 6, 0, 0, md, nil)
                C.pcre2_match_data_free_8(md)
                C.pcre2_code_free_8(code)
                ngx.say("pcre2 ", jit_on[0], " ", jc, " ", rc, " ", ffi.string(target))
            }
        }
    }
'''


def sum_mod7(n):
    return sum(i % 7 for i in range(1, n + 1))


@pytest.fixture
def serve(tmp_path):
    started = []

    def start(name):
        dest = copy_bundle(tmp_path / name)
        port = free_port()
        (dest / 'conf' / 'nginx.conf').write_text(conf_wrap(LUA_INFO % port))
        n = Nginx(dest)
        r = n.run(timeout=30 * SLOW)
        assert r.returncode == 0, r.stderr + n.error_log
        started.append(n)
        wait_for(lambda: port_open('127.0.0.1', port), timeout=10 * SLOW, what='listen')
        return dest, port
    yield start
    for n in started:
        n.stop(timeout=15 * SLOW)
        assert 'exited on signal' not in n.error_log, n.error_log[-3000:]


def get(port, path):
    status, _, body = http_get('127.0.0.1', port, path, timeout=10 * SLOW)
    assert status == 200, body
    return body.decode().split('\n')


def test_two_copies_load_resty_core_from_their_own_lualib(serve):
    for name in ('first copy', 'second'):
        dest, port = serve(name)
        where = get(port, '/where')
        assert where[0] == str(dest / 'lualib' / 'resty' / 'core.lua'), where
        assert where[1] == 'loaded'


def test_ffi_resolves_nginx_and_libc_symbols_and_both_jits_run(serve):
    _, port = serve('b')
    pid, worker_pid, sym = get(port, '/ffi')[0].split(' ')
    assert pid == worker_pid and int(pid) > 1
    assert sym == 'ffi-var-get'
    lines = get(port, '/jit')
    luajit, interp, ngx_re, pcre2 = lines[:4]
    # qemu-user translates whatever code the JITs write, so both JITs run:
    # a failure here is a real one, not an emulator limit.
    assert luajit == 'luajit true arm64 %d trace' % sum_mod7(300000), luajit
    assert interp == 'interp %d' % sum_mod7(300000), interp
    assert ngx_re == 'ngx.re 123'
    jit_on, jit_rc, match_rc, target = pcre2.split(' ', 4)[1:]
    assert (jit_on, jit_rc, match_rc) == ('1', '0', '1'), pcre2
    assert target.startswith('ARM-64'), pcre2


# --- the default config, in its own network namespace (fixed ports) --------

PEER = '127.0.1.11:8080'


def ns_post(ns, url):
    r = ns.run(['curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '-X', 'POST',
                '--max-time', str(5 * SLOW), url], timeout=10 * SLOW)
    return r.stdout


def test_default_config_serves_and_the_checker_tracks_a_killed_backend(tmp_path):
    dest = copy_bundle(tmp_path / 'bundle')
    n = Nginx(dest)
    ns = NetNS()
    try:
        r = ns.run(n.command(), timeout=30 * SLOW)     # -p only: the bundle's conf/nginx.conf
        assert r.returncode == 0, r.stderr + n.error_log
        wait_for(lambda: ns.http('http://127.0.0.1:8080/api/hello', timeout=5 * SLOW)[0] == 200,
                 timeout=20 * SLOW, interval=1, what='the proxy answers')

        def states():
            st, text = ns.http('http://127.0.0.1:18080/status', timeout=5 * SLOW)
            return peer_states_in(text) if st == 200 else {}
        wait_for(lambda: states() and set(states().values()) == {'UP'}, timeout=20 * SLOW,
                 interval=1, what='every peer UP')

        st, text = ns.http('http://127.0.0.1:18080/metrics', timeout=5 * SLOW)
        assert st == 200
        text += '\n'                           # NetNS.http strips the final newline
        ok, why = promtool(text)
        assert ok, why
        assert 'nginx_metrics_source_up{source="healthcheck_module"} 1' in text
        assert re.search(r'nginx_vts_upstream_requests_total\{upstream="foo",backend="127\.0\.1\.1[12]:8080"', text)

        assert ns_post(ns, 'http://127.0.0.1:18081/demo/kill?backend=' + PEER) == '200'
        wait_for(lambda: states().get(PEER) == 'DOWN', timeout=15 * SLOW, interval=1, what='DOWN')
        assert 'peer %s is turned down' % PEER in n.error_log
        assert ns_post(ns, 'http://127.0.0.1:18081/demo/revive?backend=' + PEER) == '200'
        wait_for(lambda: states().get(PEER) == 'UP', timeout=15 * SLOW, interval=1, what='UP again')
        ok, why = promtool(ns.http('http://127.0.0.1:18080/metrics', timeout=5 * SLOW)[1] + '\n')
        assert ok, why
    finally:
        n.stop(timeout=15 * SLOW)
        ns.close()
    assert n.crash_report() is None, n.error_log[-3000:]
