"""https checks with a client certificate (`ssl_cert`/`ssl_key`, PEM paths
relative to the prefix or absolute) against an mTLS backend that rejects
clients without one; files only root may read, loaded in init_by_lua by the
master (`hc.load_client_cert`) while the workers run as nobody (issue 26,
item 8); and `host = true`: SNI and verification name are each peer's
configured host name."""
import os
import re
import shutil

import pytest

from conftest import free_port, http_get, wait_for
from hcutil import hc_conf
from support.backends import Backend
from support.confs import LuaExpr, checker_lua, upstream_block
from support.probes import status_page, status_peers

REQ = r'"GET /health HTTP/1.0\r\nHost: mtls.test\r\n\r\n"'


@pytest.fixture(scope='module')
def pki(tmp_path_factory):
    from support.pki import PKI
    d = tmp_path_factory.mktemp('mtls')
    p = PKI(d, 'ca')
    p.issue('checker', stem='client', usage='clientAuth')
    PKI(d, 'otherca').issue('checker', stem='otherclient', usage='clientAuth')
    return p


def checker(u, **opts):
    for k, v in (('type', 'https'), ('interval', 100), ('timeout', 500), ('fall', 1),
                 ('rise', 1), ('valid_statuses', [200])):
        opts.setdefault(k, v)
    return checker_lua(u, http_req=LuaExpr(REQ), **opts)


def states(port):
    return {u: dict(peers) for u, peers in status_peers(status_page(port)).items()}


def test_client_certificate(nginx_factory, backends, pki):
    (b,) = backends(1, tls=pki.mtls_context('mtls.test'))
    port = free_port()
    d = pki.dir
    conf = hc_conf(
        [upstream_block(u, [b.addr]) for u in ('with', 'without', 'wrong')],
        [checker('with', host='mtls.test', ssl_cert='certs/client.crt', ssl_key='certs/client.key'),
         checker('without', host='mtls.test'),
         checker('wrong', host='mtls.test', ssl_cert=str(d / 'otherclient.crt'),
                 ssl_key=str(d / 'otherclient.key'))],
        port, extra_http='lua_ssl_trusted_certificate %s;' % (d / 'ca.crt'), main='user root;')
    n = nginx_factory(conf, start=False)
    (n.prefix / 'certs').mkdir()
    for f in ('client.crt', 'client.key'):          # relative to the prefix
        shutil.copy(d / f, n.prefix / 'certs' / f)
    n.start(wait_ports=[('127.0.0.1', port)])
    wait_for(lambda: states(port)['without'][b.addr] == 'DOWN'
             and states(port)['wrong'][b.addr] == 'DOWN', what='no/wrong client cert DOWN')
    wait_for(lambda: b.health >= 3, what='checks with the client certificate')
    assert states(port)['with'][b.addr] == 'UP'
    # TLS 1.3: the server's refusal (alert "certificate required", or a reset)
    # reaches the client after its handshake, with the send or the status line
    for u in ('without', 'wrong'):
        assert re.search(r'healthcheck: peer %s is turned down after 1 failure\(s\) \(upstream "%s"\): '
                         r'failed to (ssl handshake to|send request to|receive status line from) '
                         % (re.escape(b.addr), u), n.error_log), n.error_log[-2000:]
    assert 'certificate required' in n.error_log or 'alert' in n.error_log
    assert 'failed to spawn' not in n.error_log


READ_LOCATION = r'''
    server {
        listen 127.0.0.1:%d;
        # what a worker's Lua can read
        location = /read {
            content_by_lua_block {
                local f, err = io.open(ngx.config.prefix() .. ngx.var.arg_path, "rb")
                ngx.say(f and "readable" or err)
            }
        }
    }'''

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason='starts nginx as root with workers as nobody')


def root_only_files(n, pki, stem='client'):
    """certs/client.{crt,key} in the prefix (from <stem>.*): root:root, mode 0600."""
    (n.prefix / 'certs').mkdir(exist_ok=True)
    for ext in ('.crt', '.key'):
        dest = n.prefix / 'certs' / ('client' + ext)
        shutil.copy(pki.dir / (stem + ext), dest)
        os.chown(dest, 0, 0)
        os.chmod(dest, 0o600)


def nobody_conf(b, pki, port, read_port, init=''):
    return hc_conf(
        [upstream_block(u, [b.addr]) for u in ('with', 'without')],
        [checker('with', host='mtls.test', ssl_cert='certs/client.crt', ssl_key='certs/client.key'),
         checker('without', host='mtls.test')],
        port, extra_http='lua_ssl_trusted_certificate %s;\n%s' % (pki.dir / 'ca.crt', READ_LOCATION % read_port),
        main='user nobody nogroup;', init=init)


@needs_root
def test_root_only_key_loaded_by_the_master(nginx_factory, backends, pki):
    """A 0600 root:root certificate and key, read in init_by_lua (the master,
    root): the mTLS checks pass while the workers, as nobody, cannot open the
    files.  (Before: spawn_checker opened them in init_worker as nobody and
    failed; the peer stayed UP without a single check.)"""
    (b,) = backends(1, tls=pki.mtls_context('mtls.test'))
    port, read_port = free_port(), free_port()
    conf = nobody_conf(b, pki, port, read_port,
                       init='assert(hc.load_client_cert("certs/client.crt", "certs/client.key"))')
    n = nginx_factory(conf, start=False)
    root_only_files(n, pki)
    n.start(workers=1, wait_ports=[('127.0.0.1', port), ('127.0.0.1', read_port)])
    (pid,) = n.worker_pids()
    with open('/proc/%d/status' % pid) as f:
        uids = next(line for line in f if line.startswith('Uid:')).split()[1:]
    assert set(uids) == {'65534'}, uids                       # the worker is nobody
    for f in ('client.crt', 'client.key'):
        st, _, body = http_get('127.0.0.1', read_port, '/read?path=certs/' + f)
        assert st == 200 and b'Permission denied' in body, body
    wait_for(lambda: states(port)['without'][b.addr] == 'DOWN', what='no client cert DOWN')
    wait_for(lambda: b.health >= 4, what='checks with the client certificate')
    assert states(port)['with'][b.addr] == 'UP'
    assert 'failed to spawn' not in n.error_log
    assert not re.search(r'is turned down after \d+ failure\(s\) \(upstream "with"\)', n.error_log)
    # a reload reads the files anew: a certificate of another CA is refused
    root_only_files(n, pki, stem='otherclient')
    n.reload()
    wait_for(lambda: states(port)['with'][b.addr] == 'DOWN', what='the replaced certificate refused')


@needs_root
def test_root_only_key_without_load_client_cert_names_the_remedy(nginx_factory, backends, pki):
    (b,) = backends(1, tls=pki.mtls_context('mtls.test'))
    port, read_port = free_port(), free_port()
    n = nginx_factory(nobody_conf(b, pki, port, read_port), start=False)
    root_only_files(n, pki)
    n.start(wait_ports=[('127.0.0.1', port)])
    wait_for(lambda: 'failed to spawn health checker for with: bad "ssl_cert" option: cannot open '
             in n.error_log, what='the spawn error')
    assert re.search(r'cannot open \S+/certs/client.crt: Permission denied \(a file only root may read: '
                     r'read it in init_by_lua\* with load_client_cert', n.error_log), n.error_log[-2000:]


def test_load_client_cert_errors(nginx_factory, pki):
    """In init_by_lua a bad file stops the start (with assert); elsewhere the
    call is refused."""
    port = free_port()
    conf = hc_conf([upstream_block('foo', ['127.0.0.1:1'])], [], port,
                   init='assert(hc.load_client_cert("certs/nope.crt", "certs/nope.key"))')
    n = nginx_factory(conf, start=False)
    r = n.run()
    assert r.returncode != 0
    assert 'bad "ssl_cert" option: cannot open ' in r.stderr + n.error_log
    call = ('local ok, err = require("resty.upstream.healthcheck").load_client_cert("%s", "%s")\n'
            'ngx.log(ngx.ERR, "load_client_cert: ", tostring(ok), " ", err)'
            % (pki.dir / 'client.crt', pki.dir / 'client.key'))
    conf = hc_conf([upstream_block('foo', ['127.0.0.1:1'])], [call], port, main='user root;')
    n = nginx_factory(conf, name='n2', wait_ports=[('127.0.0.1', port)])
    wait_for(lambda: 'load_client_cert: nil load_client_cert must be called from init_by_lua*'
             in n.error_log, what='the phase error')


@pytest.mark.parametrize('opts,err', [
    ({'ssl_cert': 'certs/nope.crt', 'ssl_key': 'certs/nope.key'}, 'bad "ssl_cert" option: cannot open'),
    ({'ssl_cert': 'client.crt'}, 'bad "ssl_key" option: required with "ssl_cert"'),
    ({'ssl_key': 'client.key'}, 'bad "ssl_cert" option: required with "ssl_key"'),
    ({'ssl_cert': 'KEY', 'ssl_key': 'KEY'}, 'bad "ssl_cert" option: not a PEM certificate'),
    ({'ssl_cert': 'CRT', 'ssl_key': 'CRT'}, 'bad "ssl_key" option: not a PEM private key'),
    ({'type': 'http', 'ssl_cert': 'CRT', 'ssl_key': 'KEY'}, 'bad "ssl_cert" option: not used by "http"'),
])
def test_bad_client_certificate_options(nginx_factory, pki, opts, err):
    port = free_port()
    paths = {'CRT': str(pki.dir / 'client.crt'), 'KEY': str(pki.dir / 'client.key')}
    opts = {k: paths.get(v, v) for k, v in opts.items()}
    conf = hc_conf([upstream_block('foo', ['127.0.0.1:1'])], [checker('foo', **opts)], port,
                   main='user root;')
    n = nginx_factory(conf, wait_ports=[('127.0.0.1', port)])
    wait_for(lambda: 'failed to spawn health checker for foo: ' + err in n.error_log,
             what=err)


def test_host_true_is_each_peers_server_name(nginx_factory, pki):
    """server localhost:PORT -> SNI and verification name "localhost"."""
    port = free_port()
    ctx = pki.server_context('localhost')
    seen = []
    ctx.sni_callback = lambda sock, name, c: seen.append(name)
    bport = free_port()
    made = [Backend('127.0.0.1', bport, tls=ctx).start()]
    try:
        try:
            made.append(Backend('::1', bport, tls=ctx).start())
        except OSError:
            pass
        conf = hc_conf([upstream_block('foo', ['localhost:%d' % bport])],
                       [checker('foo', host=True)], port,
                       extra_http='lua_ssl_trusted_certificate %s;' % (pki.dir / 'ca.crt'),
                       main='user root;')
        n = nginx_factory(conf, wait_ports=[('127.0.0.1', port)])
        wait_for(lambda: made[0].health >= 2, what='verified checks')
        st = states(port)['foo']
        assert st['127.0.0.1:%d' % bport] == 'UP', st
        assert set(seen) == {'localhost'}, seen
        assert 'failed to ssl handshake' not in n.error_log
    finally:
        for b in made:
            b.stop()
