"""spawn_checker option validation: every bad option gives nil, err naming the
option, in the spec's order, and nothing is started (no shm keys, no timers)."""
import json
import re

import pytest

from conftest import free_port, http_get, wait_for
from support.confs import STATUS_LOCATION, conf_wrap
from support.probes import peer_states

CASES = [
    # (lua options table, expected error)
    ('{}', '"type" option required'),
    # "tcp" is supported since issue 16: the text names it, and what was given (issue 27, item 7)
    ('{type = "udp", http_req = "x", shm = "hc", upstream = "foo"}',
     'nil|only "http", "https" and "tcp" type are supported, not "udp"'),
    ('{type = "grpc", http_req = "x", shm = "hc", upstream = "foo"}',
     'nil|only "http", "https" and "tcp" type are supported, not "grpc"'),
    ('{type = 5, http_req = "x", shm = "hc", upstream = "foo"}',
     'nil|only "http", "https" and "tcp" type are supported, not 5'),
    ('{type = "http", shm = "hc", upstream = "foo"}', '"http_req" option required'),
    ('{type = "http", http_req = 42, shm = "hc", upstream = "foo"}', '"http_req"'),
    ('{type = "http", http_req = "x", upstream = "foo"}', '"shm" option required'),
    ('{type = "http", http_req = "x", shm = "nope", upstream = "foo"}', 'shm "nope" not found'),
    ('{type = "http", http_req = "x", shm = "hc"}', 'no upstream specified'),
    # the upstream is named (issue 27, item 10)
    ('{type = "http", http_req = "x", shm = "hc", upstream = "bar"}',
     'nil|failed to get primary peers: upstream "bar" not found'),
    ('{type = "http", http_req = "x", shm = "hc", upstream = "foo", timeout = "1s"}', '"timeout"'),
    ('{type = "http", http_req = "x", shm = "hc", upstream = "foo", timeout = 0}', '"timeout"'),
    ('{type = "http", http_req = "x", shm = "hc", upstream = "foo", timeout = -5}', '"timeout"'),
    ('{type = "http", http_req = "x", shm = "hc", upstream = "foo", interval = -1}', '"interval"'),
    ('{type = "http", http_req = "x", shm = "hc", upstream = "foo", interval = {}}', '"interval"'),
    ('{type = "http", http_req = "x", shm = "hc", upstream = "foo", fall = 0}', '"fall"'),
    ('{type = "http", http_req = "x", shm = "hc", upstream = "foo", fall = 1.5}', '"fall"'),
    ('{type = "http", http_req = "x", shm = "hc", upstream = "foo", rise = 0}', '"rise"'),
    ('{type = "http", http_req = "x", shm = "hc", upstream = "foo", rise = "2"}', '"rise"'),
    ('{type = "http", http_req = "x", shm = "hc", upstream = "foo", valid_statuses = 200}',
     '"valid_statuses"'),
    ('{type = "http", http_req = "x", shm = "hc", upstream = "foo", valid_statuses = {200, "x"}}',
     '"valid_statuses"'),
    ('{type = "http", http_req = "x", shm = "hc", upstream = "foo", valid_statuses = {2000}}',
     '"valid_statuses"'),
    ('{type = "http", http_req = "x", shm = "hc", upstream = "foo", concurrency = 0}',
     '"concurrency"'),
    ('{type = "http", http_req = "x", shm = "hc", upstream = "foo", concurrency = 2.5}',
     '"concurrency"'),
    ('{type = "http", http_req = "x", shm = "hc", upstream = "foo", port = 0}', '"port"'),
    ('{type = "http", http_req = "x", shm = "hc", upstream = "foo", port = 70000}', '"port"'),
    ('{type = "http", http_req = "x", shm = "hc", upstream = "foo", port = "80"}', '"port"'),
    ('{type = "https", http_req = "x", shm = "hc", upstream = "foo", ssl_verify = "yes"}',
     '"ssl_verify"'),
    ('{type = "https", http_req = "x", shm = "hc", upstream = "foo", host = 5}', '"host"'),
    # the spec's option bounds: integers in range, never NaN, inf or huge
] + [
    ('{type = "http", http_req = "x", shm = "hc", upstream = "foo", %s = %s}' % (opt, v),
     '"%s"' % opt)
    for opt, values in (
        ('timeout', ('2^31', '3e9', '1e300', '1.5', '0/0', '1/0', '-1/0')),
        ('interval', ('0', '0.5', '2^31', '1e20', '0/0', '1/0', '-1/0')),
        ('fall', ('10001', '1e300', '0/0', '1/0')),
        ('rise', ('10001', '2^31', '0/0', '-1/0')),
        ('concurrency', ('1001', '1e9', '0/0', '1/0')),
        ('port', ('1.5', '65536', '0/0', '1/0', '-1')),
    )
    for v in values
] + [
    # first error wins (table order)
    ('{type = "http", http_req = "x", shm = "hc", upstream = "foo", fall = 0, rise = 0}', '"fall"'),
    ('{type = "http", http_req = "x", shm = "nope", upstream = "bar", fall = 0}', 'shm "nope"'),
    ('{type = "http", shm = "nope"}', '"http_req" option required'),
] + [
    # a misspelled option is an error that names the option meant (issue 27, item 6),
    # before any other: a misspelled required option would only be "missing"
    ('{type = "http", http_req = "x", shm = "hc", upstream = "foo", %s}' % typo,
     'nil|unknown option "%s" (did you mean "%s"?)' % (typo.split(' =')[0], meant))
    for typo, meant in (
        ('intervall = 2000', 'interval'),
        ('valid_status = {200}', 'valid_statuses'),
        ('Interval = 2000', 'interval'),
        ('timout = 500', 'timeout'),
        ('fail = 3', 'fall'),
        ('tyep = "http"', 'type'),
        ('concurency = 2', 'concurrency'),
        ('http_request = "x"', 'http_req'),
        ('interval_unhealty = 100', 'interval_unhealthy'),
        ('initial_sate = "down"', 'initial_state'),
        ('forget = 1000', 'forget_after'),
    )
] + [
    ('{type = "https", http_req = "x", shm = "hc", upstream = "foo", ssl_verfy = false}',
     'nil|unknown option "ssl_verfy" (did you mean "ssl_verify"?)'),
    ('{type = "http", http_req = "x", shm = "hc", upstrem = "foo"}',
     'nil|unknown option "upstrem" (did you mean "upstream"?)'),
    ('{type = "http", http_req = "x", shm = "hc", upstream = "foo", intervall = 2000, fall = 0}',
     'nil|unknown option "intervall" (did you mean "interval"?)'),
]

LUA = r'''
    lua_shared_dict hc 1m;
    upstream foo { server 127.0.0.1:1; }
    upstream baz { server 127.0.0.1:1; }
    init_by_lua_block {
        local hc = require "resty.upstream.healthcheck"
        -- the master (init phase) cannot run checkers: nil, err and nothing written
        local ok, err = hc.spawn_checker{type = "http", http_req = "GET / HTTP/1.0\r\n\r\n",
                                         shm = "hc", upstream = "foo"}
        package.loaded.init_phase_result = tostring(ok) .. "|" .. tostring(err)
    }
    server {
        listen 127.0.0.1:%d;
        location = /validate {
            content_by_lua_block {
                local cjson_ok, cjson = pcall(require, "cjson")
                local hc = require "resty.upstream.healthcheck"
                local cases = {
%s
                }
                local out = {}
                for i, opts in ipairs(cases) do
                    local ok, res, err = pcall(hc.spawn_checker, opts)
                    out[#out + 1] = (ok and "" or "RAISED ") .. tostring(res) .. "|" .. tostring(err)
                end
                out[#out + 1] = "keys=" .. #ngx.shared.hc:get_keys(0)
                out[#out + 1] = "timers=" .. ngx.timer.pending_count() + ngx.timer.running_count()
                ngx.print(table.concat(out, "\n"))
            }
        }
        location = /module {
            content_by_lua_block {
                local hc = require "resty.upstream.healthcheck"
                local keys = {}
                for k, v in pairs(hc) do keys[#keys + 1] = k .. ":" .. type(v) end
                table.sort(keys)
                ngx.say(table.concat(keys, " "))
                -- without ngx.upstream, require raises the documented error
                local saved_pre = package.preload["ngx.upstream"]
                local saved = package.loaded["ngx.upstream"]
                package.preload["ngx.upstream"] = nil
                package.loaded["ngx.upstream"] = nil
                package.loaded["resty.upstream.healthcheck"] = nil
                local ok, err = pcall(require, "resty.upstream.healthcheck")
                package.preload["ngx.upstream"] = saved_pre
                package.loaded["ngx.upstream"] = saved
                package.loaded["resty.upstream.healthcheck"] = hc
                ngx.say(ok and "loaded" or err)
            }
        }
        location = /initphase {
            content_by_lua_block { ngx.print(package.loaded.init_phase_result) }
        }
        location = /valid {
            content_by_lua_block {
                local hc = require "resty.upstream.healthcheck"
                local ok, err = hc.spawn_checker{type = "http", http_req = "GET / HTTP/1.0\r\n\r\n",
                    shm = "hc", upstream = "foo", interval = 1, valid_statuses = {}, port = 8080,
                    ssl_verify = false, host = "x.test", concurrency = 3, fall = 1, rise = 1,
                    timeout = 100}
                ngx.say(tostring(ok), " ", tostring(err))
            }
        }
        location = /valid_max {
            content_by_lua_block {
                local hc = require "resty.upstream.healthcheck"
                local opts = {type = "http", http_req = "GET / HTTP/1.0\r\n\r\n",
                    shm = "hc", upstream = "baz", timeout = 2^31 - 1,
                    interval = 2^31 - 1, fall = 10000, rise = 10000, concurrency = 1000,
                    port = 65535}
                local ok, err = hc.spawn_checker(opts)
                local ok2, err2 = hc.spawn_checker(opts)
                ngx.say(tostring(ok), " ", tostring(err), "|", tostring(ok2), " ",
                        tostring(err2))
            }
        }
    }
'''


@pytest.fixture(scope='module')
def port():
    return free_port()


def test_bad_options(nginx_factory):
    port = free_port()
    cases = ',\n'.join('                    ' + c for c, _ in CASES)
    n = nginx_factory(conf_wrap(LUA % (port, cases)), wait_ports=[('127.0.0.1', port)])
    st, _, body = http_get('127.0.0.1', port, '/validate')
    assert st == 200, body
    lines = body.decode().split('\n')
    results, tail = lines[:len(CASES)], lines[len(CASES):]
    for (opts, want), got in zip(CASES, results):
        assert got.startswith('nil|'), (opts, got)       # returned nil, err; never raised
        if want.startswith('nil|'):
            assert got == want, (opts, got)              # verbatim
        else:
            assert want in got, (opts, got)
    # nothing half-started: no shm keys written, no timers created
    assert tail == ['keys=0', 'timers=0'], tail
    assert '[error]' not in n.error_log.replace('failed to spawn', '')


def test_module_table_and_missing_dependency(nginx_factory):
    port = free_port()
    n = nginx_factory(conf_wrap(LUA % (port, '')), wait_ports=[('127.0.0.1', port)])
    st, _, body = http_get('127.0.0.1', port, '/module')
    keys, err = body.decode().splitlines()
    # the contract's four, then hc.report (passive checks) and hc.status_json (issue 16),
    # hc.load_client_cert (issue 26), hc.checkers_ready and hc.upstreams_live (issue 28: probes)
    assert keys == ('_VERSION:string checkers_ready:function load_client_cert:function '
                    'prometheus_status_page:function report:function spawn_checker:function '
                    'status_json:function status_page:function upstreams_live:function')
    assert 'ngx_upstream_lua module required' in err


def test_valid_options_and_interval_floor(nginx_factory):
    port = free_port()
    n = nginx_factory(conf_wrap(LUA % (port, '')), wait_ports=[('127.0.0.1', port)])
    st, _, body = http_get('127.0.0.1', port, '/valid')
    assert body.decode().strip() == 'true nil'


def test_init_phase_is_refused(nginx_factory):
    port = free_port()
    nginx_factory(conf_wrap(LUA % (port, '')), wait_ports=[('127.0.0.1', port)])
    body = http_get('127.0.0.1', port, '/initphase')[2].decode()
    assert body.startswith('nil|') and 'init_worker_by_lua' in body, body


def test_bounds_are_inclusive_and_a_second_checker_is_refused(nginx_factory):
    port = free_port()
    nginx_factory(conf_wrap(LUA % (port, '')), wait_ports=[('127.0.0.1', port)])
    body = http_get('127.0.0.1', port, '/valid_max')[2].decode().strip()
    assert body == 'true nil|nil checker already spawned for upstream baz', body


UNKNOWN = r'''
    lua_shared_dict hc 1m;
    upstream foo { server 127.0.0.1:1; }
    init_worker_by_lua_block {
        local hc = require "resty.upstream.healthcheck"
        -- written for another checker: keys no option of ours is close to
        local ok, err = hc.spawn_checker{type = "http", http_req = "GET / HTTP/1.0\r\n\r\n",
            shm = "hc", upstream = "foo", interval = 100, fall = 1,
            checks = {}, name = "x", shm_name = "hc", [1] = "positional"}
        if not ok then
            ngx.log(ngx.ERR, "failed to spawn health checker: ", err)
        end
    }
    server {
        listen 127.0.0.1:%d;
%s
    }
'''


def test_unknown_options_far_from_every_option_are_one_warning(nginx_factory):
    """Issue 27, item 6: keys that no option is close to (a config written for
    another checker) keep the checker starting, and one warning names them,
    from worker 0 only (not once per worker)."""
    port = free_port()
    n = nginx_factory(conf_wrap(UNKNOWN % (port, STATUS_LOCATION), workers=2), workers=2,
                      wait_ports=[('127.0.0.1', port)])
    wait_for(lambda: peer_states(port).get('127.0.0.1:1') == 'DOWN', what='the checker to run')
    lines = [l for l in n.error_log.splitlines() if 'unknown option' in l]
    assert len(lines) == 1, lines
    assert re.search(r'\[warn\] \d+#\d+: \*\d+ \[lua\] healthcheck\.lua:\d+: spawn_checker\(\): '
                     r'healthcheck: unknown options ignored by spawn_checker for upstream "foo": '
                     r'"checks", "name", "shm_name", 1, context: init_worker_by_lua\*$', lines[0]), lines[0]
    assert 'failed to spawn' not in n.error_log
