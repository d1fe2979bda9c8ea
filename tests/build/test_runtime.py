"""The bundle runs from any prefix, loads its Lua runtime from plain files under
lualib/, and handles -t, reload and graceful quit."""
import os
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile

import pytest

from conftest import (BUNDLE, IS_ASAN, ROOT, Nginx, conf_wrap, copy_bundle, free_port, http_get,
                      port_open, wait_for)
from support.bundle import EXEC_WRAPPER

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


def resty_core_failure(dest, env=None):
    """(`nginx -t`, start) of a copy whose resty.core cannot load."""
    conf = dest / 'conf' / 'nginx.conf'
    conf.write_text(conf_wrap(LUA_INFO % free_port()))
    n = Nginx(dest, env)
    t = subprocess.run([n.binary, '-p', str(dest), '-t'], cwd='/', env=n.env,
                       capture_output=True, text=True, timeout=30)
    start = subprocess.run([n.binary, '-p', str(dest)], cwd='/', env=n.env,
                           capture_output=True, text=True, timeout=30)
    return t, start


def test_missing_resty_core_file_fails_the_test_and_the_start_clearly(tmp_path):
    """Issue 27, item 8: `-t` passed (it set up no Lua VM) and only the start
    failed, with a message that sent the user to OpenResty's download page;
    now both fail and say where this bundle keeps resty.core."""
    dest = copy_bundle(tmp_path / 'b')
    (dest / 'lualib' / 'resty' / 'core.lua').unlink()
    want = ("nginx: [alert] failed to load the 'resty.core' module: this nginx-portable bundle loads it "
            "from %s/lualib/, first on the default Lua path: check the prefix (-p), that lualib/ is "
            "complete and that lua_package_path names no other lua-resty-core before it (reason: module "
            "'resty.core' not found:\n\tno field package.preload['resty.core']\n\tno file "
            "'%s/lualib/resty/core.lua'" % (dest, dest))
    t, start = resty_core_failure(dest)
    for r in (t, start):
        assert r.returncode != 0
        assert want in r.stderr, r.stderr
        assert ' in %s/conf/nginx.conf:' % dest in r.stderr and 'openresty.org' not in r.stderr
    assert 'configuration file %s/conf/nginx.conf test failed' % dest in t.stderr


def test_missing_resty_core_module_fails_the_test_and_the_start(tmp_path):
    """`-t` no longer parses every resty.core module (issue 29: that was half
    of its instructions), but looks each one up on the Lua path as require
    does: a missing one fails the test with require's own message, as the
    start fails."""
    dest = copy_bundle(tmp_path / 'b')
    (dest / 'lualib' / 'resty' / 'core' / 'shdict.lua').unlink()
    want = "module 'resty.core.shdict' not found:"
    t, start = resty_core_failure(dest)
    for r in (t, start):
        assert r.returncode != 0
        assert "failed to load the 'resty.core' module" in r.stderr and want in r.stderr, r.stderr
        assert "no file '%s/lualib/resty/core/shdict.lua'" % dest in r.stderr, r.stderr
    assert 'configuration file %s/conf/nginx.conf test failed' % dest in t.stderr


@pytest.mark.skipif(bool(EXEC_WRAPPER), reason='strace of the emulator')
def test_config_test_reads_only_resty_core_and_its_base(tmp_path):
    """Issue 29: `-t` parsed all ~5,400 lines of resty/core/ (12 M of its
    27 M instructions); now it reads resty/core.lua and resty/core/base.lua
    and only looks the other modules up (opened, never read)."""
    dest = copy_bundle(tmp_path / 'b')
    (dest / 'conf' / 'nginx.conf').write_text(conf_wrap('server { listen 127.0.0.1:%d; }' % free_port()))
    trace = tmp_path / 'strace.txt'
    r = subprocess.run(['strace', '-f', '-qq', '-y', '-o', str(trace), '-e', 'trace=openat,read',
                        str(dest / 'sbin' / 'nginx'), '-p', str(dest) + '/', '-t'],
                       env=dict(os.environ, ASAN_OPTIONS='detect_leaks=0'),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    calls = trace.read_text()
    core = str(dest / 'lualib' / 'resty' / 'core')
    read = set(re.findall(r'\bread\(\d+<(%s[^>]*)>' % re.escape(core), calls))
    opened = set(re.findall(r'openat\(.*"(%s[^"]*)"' % re.escape(core), calls))
    assert read == {core + '.lua', core + '/base.lua'}, sorted(read)
    assert core + '/shdict.lua' in opened and core + '/var.lua' in opened, sorted(opened)


def test_config_test_does_not_run_init_by_lua(nginx_factory):
    """`-t` loads resty.core now (above), but runs no code of the config's."""
    n = nginx_factory(conf_wrap('''
    init_by_lua_block {
        local f = assert(io.open(ngx.config.prefix() .. "logs/init-ran", "w"))
        f:close()
    }'''), start=False)
    r = n.test_config()
    assert r.returncode == 0 and 'test is successful' in r.stderr, r.stderr
    assert not (n.prefix / 'logs' / 'init-ran').exists()
    n.start()
    wait_for((n.prefix / 'logs' / 'init-ran').exists, what='init_by_lua at the start')


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


DLSYM = r'''
    server {
        listen 127.0.0.1:%d;
        location = /dlsym {
            content_by_lua_block {
                local ffi = require "ffi"
                ffi.cdef[[ void *dlsym(void *handle, const char *name); ]]
                local out = {}
                for name in io.lines(ngx.config.prefix() .. "names.txt") do
                    local addr = ffi.C.dlsym(nil, name)
                    out[#out + 1] = string.format("%%.0f", tonumber(ffi.cast("uintptr_t", addr)))
                end
                ngx.print(table.concat(out, "\n"))
            }
        }
    }
'''


def build_id(path):
    out = subprocess.run(['readelf', '-nW', str(path)], capture_output=True, text=True).stdout
    m = re.search(r'Build ID: (\w+)', out)
    return m and m.group(1)


def test_ffi_symbol_table_finds_every_symbol_and_nothing_else(serve_copy):
    """ffi.C resolves names through np_static_dlsym.c's front-coded table
    (build/static-symbols/): every global function and object of the
    unstripped binary at its own address, names that are not there (before,
    between and after the table's names, prefixes and extensions of real
    ones) nowhere."""
    import sys
    sys.path.insert(0, str(ROOT / 'build' / 'static-symbols'))
    import gen_symtab
    if IS_ASAN:
        # dynamically linked: ffi.C.dlsym is then libc's own (the table holds only what
        # the executable defines), while LuaJIT's calls still go through the wrapper
        pytest.skip('the ASan build is dynamically linked')
    unstripped = ROOT / '.build' / 'release' / 'nginx' / 'objs' / 'nginx'
    if not unstripped.is_file() or build_id(unstripped) != build_id(BUNDLE / 'sbin' / 'nginx'):
        pytest.skip('the unstripped binary of this bundle is not in .build/release')
    out = subprocess.run(['readelf', '-Ws', str(unstripped)], capture_output=True, text=True).stdout
    value = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) == 8 and f[4] in ('GLOBAL', 'WEAK') and f[6] != 'UND':
            value.setdefault(f[7].split('@')[0], int(f[1], 16))
    defined, _ = gen_symtab.binary_symbols(str(unstripped))
    names = sorted(n for n in defined if n != 'dlsym')    # ffi.C.dlsym is the wrapper
    assert len(names) > 5000
    absent = ['', 'A', 'zzzz_np_absent', '_', names[0][:-1], names[-1] + 'x',
              'ngx_http_lua_ffi_var_ge', 'ngx_http_lua_ffi_var_get_', 'ngx_http_lua_ffi_var_gets']
    absent = [a for a in absent if a not in defined]
    dest, port = serve_copy(body=DLSYM, setup=lambda d: (d / 'names.txt').write_text(
        '\n'.join(names + absent) + '\n'))
    status, _, body = http_get('127.0.0.1', port, '/dlsym')
    assert status == 200, body[:500]
    got = [int(x) for x in body.decode().split('\n')]
    assert len(got) == len(names) + len(absent)
    base = got[names.index('ngx_http_lua_ffi_var_get')] - value['ngx_http_lua_ffi_var_get']
    wrong = [n for n, a in zip(names, got) if a != base + value[n]]
    assert wrong == [], '%d of %d names resolve wrongly: %s' % (len(wrong), len(names), wrong[:10])
    assert got[len(names):] == [0] * len(absent), list(zip(absent, got[len(names):]))


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


def test_lua_path_env_without_lualib_fails_the_test_and_the_start_clearly(tmp_path):
    """LUA_PATH replaces the default: without lualib/ in it, resty.core is
    not found.  Issue 27, item 8: `-t` passed; now it fails as the start
    does, and the message says what to put into LUA_PATH."""
    dest = copy_bundle(tmp_path / 'b')
    want = ("nginx: [alert] failed to load the 'resty.core' module: this nginx-portable bundle loads it "
            "from %s/lualib/, which LUA_PATH replaces as the default Lua path: add \"%s/lualib/?.lua;\" "
            "at the start of LUA_PATH or unset it (reason: module 'resty.core' not found:\n\tno field "
            "package.preload['resty.core']\n\tno file '/nonexistent/resty/core.lua'" % (dest, dest))
    t, start = resty_core_failure(dest, env={'LUA_PATH': '/nonexistent/?.lua'})
    for r in (t, start):
        assert r.returncode != 0
        assert want in r.stderr, r.stderr
        assert 'openresty.org' not in r.stderr
    assert 'configuration file %s/conf/nginx.conf test failed' % dest in t.stderr


def test_another_resty_core_first_fails_the_test(tmp_path):
    """Another release's lua-resty-core before ours in LUA_PATH (its version
    check refuses this lua-nginx-module): `-t` fails as the start does."""
    dest = copy_bundle(tmp_path / 'b')
    other = tmp_path / 'other-openresty' / 'lualib'
    shutil.copytree(dest / 'lualib', other)
    base = other / 'resty' / 'core' / 'base.lua'
    text = base.read_text()
    version = re.search(r'ngx\.config\.ngx_lua_version ~= (\d+)', text).group(1)
    base.write_text(text.replace('~= %s' % version, '~= %d' % (int(version) - 1)))
    t, start = resty_core_failure(dest, env={'LUA_PATH': '%s/?.lua;%s/lualib/?.lua' % (other, dest)})
    for r in (t, start):
        assert r.returncode != 0
        assert 'at the start of LUA_PATH' in r.stderr, r.stderr
        assert 'required but got %s' % version in r.stderr, r.stderr


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


def run_plain(binary, *args, cwd='/'):
    """binary run as is (no -p), from cwd."""
    return subprocess.run([str(binary), *args], cwd=cwd, capture_output=True, text=True, timeout=30,
                          env=Nginx(BUNDLE).env)


def test_without_p_the_prefix_is_the_directory_above_sbin(tmp_path, stopper):
    """Issue 27, item 15: without -p nginx used its compiled-in prefix
    /opt/nginx-portable, so a bundle anywhere else needed -p for everything
    (start, -t, -s).  Now the prefix is the directory above the binary's
    sbin/ (symbolic links resolved); -p still wins; a binary elsewhere keeps
    the compiled-in prefix."""
    dest = copy_bundle(tmp_path / 'moved')
    port = free_port()
    (dest / 'conf' / 'nginx.conf').write_text(conf_wrap(LUA_INFO % port))
    binary = dest / 'sbin' / 'nginx'
    r = run_plain(binary, '-t')
    assert r.returncode == 0, r.stderr
    assert 'the configuration file %s/conf/nginx.conf syntax is ok' % dest in r.stderr, r.stderr
    assert 'could not open error log file' not in r.stderr      # the early log is the bundle's too
    r = run_plain(binary)
    assert r.returncode == 0, r.stderr
    n = Nginx(dest)
    stopper(n)
    wait_for(lambda: port_open('127.0.0.1', port), what='listen')
    lines = http_get('127.0.0.1', port, '/where')[2].decode().split('\n')
    assert lines[0] == str(dest / 'lualib' / 'resty' / 'core.lua') and lines[2] == 'loaded', lines
    pid = n.master_pid()                            # from <dest>/logs/nginx.pid
    assert pid
    assert run_plain(binary, '-s', 'quit').returncode == 0       # it finds that file too
    wait_for(lambda: gone(pid), what='quit')

    # a symbolic link to the binary: the bundle it points into
    (tmp_path / 'bin').mkdir()
    (tmp_path / 'bin' / 'nginx').symlink_to(binary)
    r = run_plain(tmp_path / 'bin' / 'nginx', '-t', cwd=str(tmp_path))
    assert 'the configuration file %s/conf/nginx.conf syntax is ok' % dest in r.stderr, r.stderr
    # -p still wins
    other = copy_bundle(tmp_path / 'other')
    (other / 'conf' / 'nginx.conf').write_text(conf_wrap(''))
    r = run_plain(binary, '-p', str(other), '-t')
    assert 'the configuration file %s/conf/nginx.conf syntax is ok' % other in r.stderr, r.stderr
    # not in a directory named sbin: the compiled-in prefix, as before
    (tmp_path / 'tools').mkdir()
    shutil.copy(binary, tmp_path / 'tools' / 'nginx')
    r = run_plain(tmp_path / 'tools' / 'nginx', '-t')
    assert r.returncode != 0
    assert 'open() "/opt/nginx-portable/conf/nginx.conf" failed' in r.stderr, r.stderr


def gone(pid):
    """Exited (a zombie waiting for its reaper counts as gone)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] == 'Z'
    except OSError:
        return True


def test_c_elsewhere_resolves_include_next_to_that_config(tmp_path):
    """Issue 27, item 14: with -c naming a config outside conf/, `include
    mime.types` (and every other config-relative file) resolves next to that
    config, as in any nginx; the README said against conf/.  The README says
    so now; this pins the behaviour it describes (the code did not change)."""
    dest = copy_bundle(tmp_path / 'b')
    etc = tmp_path / 'etc'
    etc.mkdir()
    conf = etc / 'nginx.conf'
    conf.write_text(conf_wrap('server { listen 127.0.0.1:%d; }' % free_port()))   # include mime.types;
    n = Nginx(dest)
    r = n.run('-c', str(conf), '-t')
    assert r.returncode != 0
    assert 'open() "%s/mime.types" failed (2: No such file or directory) in %s:' % (etc, conf) in r.stderr, r.stderr
    # the README's two ways out: the file beside the config, or an absolute include
    shutil.copy(dest / 'conf' / 'mime.types', etc / 'mime.types')
    assert n.run('-c', str(conf), '-t').returncode == 0
    (etc / 'mime.types').unlink()
    conf.write_text(conf.read_text().replace('include mime.types;', 'include %s/conf/mime.types;' % dest))
    assert n.run('-c', str(conf), '-t').returncode == 0
    readme = ' '.join((ROOT / 'README.md').read_text().split())
    assert 'against the directory of the config file' in readme
