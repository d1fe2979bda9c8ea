"""The bundle runs from any prefix, loads its Lua runtime from plain files under
lualib/, and handles -t, reload and graceful quit."""
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile

import pytest

from conftest import (BUNDLE, Nginx, conf_wrap, copy_bundle, free_port, http_get,
                      port_open, wait_for)

LUA_INFO = r'''
    server {
        listen 127.0.0.1:%d;
        location = /path { content_by_lua_block { ngx.print(package.path) } }
        location = /where {
            content_by_lua_block {
                ngx.say(package.searchpath("resty.core", package.path))
                ngx.say(package.searchpath("resty.lrucache", package.path))
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
                ngx.say(require("resty.lrucache").new(4) and "lrucache" or "no")
                local m = ngx.re.match("abc123", [[\d+]], "jo")
                ngx.say(m and m[0] or "nomatch")
            }
        }
    }
'''


def start_copy(dest, http_body, env=None, cwd='/'):
    (dest / 'conf' / 'nginx.conf').write_text(conf_wrap(http_body))
    n = Nginx(dest, env)
    r = subprocess.run([n.binary, '-p', str(dest)], cwd=cwd, env=n.env,
                       capture_output=True, text=True, timeout=30)
    return n, r


@pytest.fixture
def stopper():
    started = []
    yield started.append
    for n in started:
        n.stop()


@pytest.fixture
def serve_copy(tmp_path, stopper):
    """serve_copy(name, http_body % port, env) -> (dest, port): a started copy."""
    def serve(name='b', body=LUA_INFO, env=None, setup=None):
        dest = copy_bundle(tmp_path / name)
        if setup:
            setup(dest)
        port = free_port()
        n, r = start_copy(dest, body % port, env=env)
        assert r.returncode == 0, r.stderr + n.error_log
        stopper(n)
        wait_for(lambda: port_open('127.0.0.1', port), what='listen')
        return dest, port
    return serve


def test_runs_from_two_copies_and_loads_lualib_from_each(serve_copy):
    for name in ('first copy', 'second'):
        dest, port = serve_copy(name)
        status, _, body = http_get('127.0.0.1', port, '/where')
        lines = body.decode().split('\n')
        assert status == 200
        assert lines[0] == str(dest / 'lualib' / 'resty' / 'core.lua'), lines
        assert lines[1].startswith(str(dest)) and lines[1].endswith('lualib/resty/lrucache.lua')
        assert lines[2] == 'loaded'


def test_default_config_loaded_without_c(serve_copy):
    dest, port = serve_copy()          # started with -p only: <prefix>/conf/nginx.conf
    assert http_get('127.0.0.1', port, '/path')[0] == 200


def test_missing_resty_core_file_fails_startup_clearly(tmp_path):
    dest = copy_bundle(tmp_path / 'b')
    (dest / 'lualib' / 'resty' / 'core.lua').unlink()
    n, r = start_copy(dest, LUA_INFO % free_port())
    assert r.returncode != 0
    text = r.stderr + n.error_log
    assert "failed to load the 'resty.core' module" in text, text
    assert str(dest) in text     # the message shows where it looked


def test_ffi_finds_nginx_and_libc_symbols_and_pcre_jit_works(serve_copy):
    dest, port = serve_copy()
    status, _, body = http_get('127.0.0.1', port, '/ffi')
    assert status == 200, body
    first, second, third = body.decode().split('\n')[:3]
    pid, worker_pid, sym = first.split(' ')
    assert pid == worker_pid and int(pid) > 1
    assert sym == 'ffi-var-get'
    assert second == 'lrucache'
    assert third == '123'


def test_double_semicolon_appends_runtime_default(serve_copy):
    dest, port = serve_copy(body='lua_package_path "$prefix/custom/?.lua;;";\n' + LUA_INFO)
    path = http_get('127.0.0.1', port, '/path')[2].decode()
    entries = path.split(';')
    assert entries[0] == str(dest) + '//custom/?.lua' or entries[0] == str(dest) + '/custom/?.lua'
    assert any(e.endswith('/lualib/?.lua') and e.startswith(str(dest)) for e in entries[1:])
    assert '/usr/local/share/lua/5.1/?.lua' in entries     # LuaJIT's own defaults follow


def test_lua_path_env_is_the_default(serve_copy, tmp_path):
    lua_path = '%s/lualib/?.lua;/opt/elsewhere/?.lua' % (tmp_path / 'b')
    dest, port = serve_copy(env={'LUA_PATH': lua_path})
    assert http_get('127.0.0.1', port, '/path')[2].decode() == lua_path


def test_lua_path_env_without_lualib_means_no_resty_core(tmp_path):
    # LUA_PATH replaces the default: without lualib/ in it, resty.core is not found.
    dest = copy_bundle(tmp_path / 'b')
    n, r = start_copy(dest, LUA_INFO % free_port(), env={'LUA_PATH': '/nonexistent/?.lua'})
    assert r.returncode != 0
    assert "resty.core" in r.stderr + n.error_log


def test_config_test_good_and_bad(nginx_factory):
    n = nginx_factory(conf_wrap('server { listen 127.0.0.1:%d; }' % free_port()), start=False)
    r = n.test_config()
    assert r.returncode == 0 and 'test is successful' in r.stderr
    conf = n.prefix / 'conf' / 'nginx.conf'
    text = conf.read_text().splitlines()
    text.insert(3, 'no_such_directive on;')
    conf.write_text('\n'.join(text))
    r = n.test_config()
    assert r.returncode != 0
    assert 'unknown directive "no_such_directive" in %s:4' % conf in r.stderr, r.stderr


def test_reload_and_graceful_quit(nginx_factory):
    port = free_port()
    n = nginx_factory(conf_wrap('server { listen 127.0.0.1:%d; location / { return 200 "one"; } }'
                                % port, workers=2), workers=2, wait_ports=[('127.0.0.1', port)])
    assert http_get('127.0.0.1', port)[2] == b'one'
    conf = n.prefix / 'conf' / 'nginx.conf'
    conf.write_text(conf.read_text().replace('"one"', '"two"'))
    before = n.worker_pids()
    n.reload()
    assert set(n.worker_pids()).isdisjoint(before)
    assert http_get('127.0.0.1', port)[2] == b'two'
    assert 'reconfiguring' in n.error_log
    n.stop()
    assert 'exit' in n.error_log and not port_open('127.0.0.1', port)


def test_runs_as_non_root_user(tmp_path):
    if os.geteuid() != 0:
        pytest.skip('needs root to switch to nobody')
    # pytest's tmp_path lives under a 0700 directory: use one nobody can reach
    top = pathlib.Path(tempfile.mkdtemp(prefix='np-nonroot-'))
    os.chmod(top, 0o755)
    dest = copy_bundle(top / 'b')
    port = free_port()
    (dest / 'conf' / 'nginx.conf').write_text(conf_wrap(LUA_INFO % port))
    subprocess.run(['chown', '-R', 'nobody:nogroup', str(dest)], check=True)
    r = subprocess.run(['setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups',
                        str(dest / 'sbin' / 'nginx'), '-p', str(dest)],
                       capture_output=True, text=True, cwd='/', timeout=30)
    n = Nginx(dest)
    try:
        assert r.returncode == 0, r.stderr
        wait_for(lambda: port_open('127.0.0.1', port), what='listen')
        assert http_get('127.0.0.1', port, '/where')[2].decode().endswith('loaded\n')
        assert 'nobody' in subprocess.run(['ps', '-o', 'user=', '-p', str(n.master_pid())],
                                          capture_output=True, text=True).stdout
    finally:
        n.stop()
        shutil.rmtree(top, ignore_errors=True)


def test_root_master_switches_workers_to_compiled_user(nginx_factory):
    if os.geteuid() != 0:
        pytest.skip('needs root')
    port = free_port()
    n = nginx_factory(conf_wrap('server { listen 127.0.0.1:%d; }' % port), workers=1,
                      wait_ports=[('127.0.0.1', port)])
    users = subprocess.run(['ps', '-o', 'user=', '-p', str(n.worker_pids()[0])],
                           capture_output=True, text=True).stdout.strip()
    assert users == 'nobody'     # getpwnam/getgrnam work in the static binary
