"""The release binary is a hardened static-pie nginx with the promised modules."""
import os
import re
import subprocess

import pytest

from conftest import BUNDLE, IS_ASAN
from support.bundle import ROOT
from support.lock import locked_version

NGINX = str(BUNDLE / 'sbin' / 'nginx')
pytestmark = pytest.mark.skipif(IS_ASAN, reason='properties of the release binary')


def sh(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True)


def test_file_says_static_pie():
    out = sh('file', '-L', NGINX).stdout
    assert 'static-pie linked' in out, out


def test_no_interpreter_and_ldd_finds_nothing():
    headers = sh('readelf', '-lW', NGINX).stdout
    assert 'INTERP' not in headers
    assert re.search(r'^\s*GNU_RELRO', headers, re.M)
    stack = re.search(r'^\s*GNU_STACK.*$', headers, re.M).group(0)
    assert 'RWE' not in stack, stack          # non-executable stack
    ldd = sh('ldd', NGINX)
    text = ldd.stdout + ldd.stderr
    assert '=>' not in text and ('statically linked' in text or 'not a dynamic executable' in text), text


def test_elf_type_and_relocations():
    assert 'DYN' in sh('readelf', '-hW', NGINX).stdout
    dyn = sh('readelf', '-dW', NGINX).stdout
    assert 'BIND_NOW' in dyn or 'FLAGS_1' in dyn and 'NOW' in dyn, dyn
    relocs = sh('readelf', '-rW', NGINX).stdout
    kinds = set(re.findall(r'\bR_X86_64_\w+', relocs))
    assert kinds <= {'R_X86_64_RELATIVE', 'R_X86_64_IRELATIVE'}, kinds


def test_relative_relocations_are_packed():
    """-z pack-relative-relocs (DT_RELR, issue 29): the ~57,000 relative
    relocations are a ~11 KB bitmap instead of 1.37 MB of .rela.dyn; what is
    left there is IRELATIVE (and, at most, the odd unaligned RELATIVE)."""
    dyn = sh('readelf', '-dW', NGINX).stdout
    assert re.search(r'\(RELR\)', dyn) and re.search(r'\(RELRENT\)\s+8 ', dyn), dyn
    relasz = re.search(r'\(RELASZ\)\s+(\d+)', dyn)
    assert relasz is None or int(relasz.group(1)) < 16 * 1024, relasz.group(0)
    relrsz = int(re.search(r'\(RELRSZ\)\s+(\d+)', dyn).group(1))
    assert 0 < relrsz < 64 * 1024, relrsz


def test_stripped_binary_is_under_10_5_mb():
    """Issue 29: under 10.5 MB with HTTP/3 (11.8 MB before DT_RELR, the
    compact FFI table and unwind-table-free OpenSSL, PCRE2 and zlib)."""
    size = os.path.getsize(NGINX)
    assert size < 10500000, size
    sections = sh('readelf', '-SW', NGINX).stdout
    assert '.symtab' not in sections and '.debug_info' not in sections


UNSTRIPPED = ROOT / '.build' / 'release' / 'nginx' / 'objs' / 'nginx'


@pytest.mark.skipif(BUNDLE.resolve() != (ROOT / 'dist' / 'nginx-portable').resolve()
                    or not UNSTRIPPED.is_file(), reason='the build tree of this bundle is not here')
def test_libraries_have_no_unwind_tables_and_nginx_has():
    """flags.sh: OpenSSL, PCRE2 and zlib lose their .eh_frame entries; nginx,
    lua-nginx-module and LuaJIT keep theirs (LuaJIT unwinds those frames)."""
    frames = sh('readelf', '--debug-dump=frames', str(UNSTRIPPED)).stdout
    starts = {int(a, 16) for a in re.findall(r'FDE cie=\w+ pc=([0-9a-f]+)\.\.', frames)}
    functions = {}
    for line in sh('nm', str(UNSTRIPPED)).stdout.splitlines():
        f = line.split()
        if len(f) == 3 and f[1] in 'tT':
            functions[f[2]] = int(f[0], 16)
    for name in ('ngx_http_lua_run_thread', 'lua_pcall', 'ngx_http_process_request_line', 'main'):
        assert functions[name] in starts, name + ' lost its unwind table'
    for name in ('SSL_do_handshake', 'EVP_DigestUpdate', 'pcre2_match_8', 'deflate'):
        assert functions[name] not in starts, name + ' has an unwind table'


def test_openssl_is_compiled_at_its_own_optimisation_level():
    """OpenSSL's Configure picks -O3; our flags used to follow it with -O2,
    which gcc obeys (the last -O wins).  libcrypto records its compiler
    flags (`openssl version -f`): -O3 and our hardening, no other -O."""
    data = open(NGINX, 'rb').read()
    m = re.search(rb'compiler: [^\0]*', data)
    assert m, 'no OpenSSL compiler flags in the binary'
    flags = m.group(0).decode().split()
    assert [f for f in flags if f.startswith('-O')] == ['-O3'], m.group(0)
    for f in ('-fstack-protector-strong', '-fstack-clash-protection', '-D_FORTIFY_SOURCE=2', '-fPIE'):
        assert f in flags, f


def test_no_exported_dynamic_symbols():
    # -Wl,-E must be gone: it crashes glibc static-pie before main.
    dynsym = sh('readelf', '--dyn-syms', '-W', NGINX).stdout
    assert len([l for l in dynsym.splitlines() if re.match(r'\s*\d+:', l)]) <= 1, dynsym[:2000]


def test_version_lists_modules_and_libraries():
    out = sh(NGINX, '-V').stderr
    assert 'nginx version: nginx/%s\n' % locked_version('nginx') in out
    assert 'built with OpenSSL %s ' % locked_version('openssl') in out
    for flag in ('--with-http_ssl_module', '--with-http_v2_module', '--with-http_realip_module',
                 '--with-http_stub_status_module', '--with-http_gzip_static_module',
                 '--with-stream', '--with-stream_ssl_module', '--with-stream_realip_module',
                 '--with-http_auth_request_module', '--with-http_sub_module',
                 '--with-http_secure_link_module', '--with-http_gunzip_module',
                 '--with-http_addition_module', '--with-http_slice_module', '--with-http_v3_module',
                 '--with-threads', '--with-pcre', '--with-pcre-jit',
                 'ngx_devel_kit', 'lua-nginx-module', '-fstack-protector-strong',
                 '-D_FORTIFY_SOURCE=2', '-Wl,-z,relro,-z,now', '-static-pie'):
        assert flag in out, flag
    # PCRE2 only (PCRE1 is end of life); modules with open CVEs left out (SECURITY.md)
    assert '--without-pcre2' not in out
    for flag in ('--with-stream_ssl_preread_module', '--with-mail', '--without-http_ssi_module'):
        assert flag not in out, flag
    # configured with relative paths only: nothing of the build machine leaks
    assert '/root/' not in out and '/work/' not in out and '.cache' not in out


def test_stack_protector_and_fortify_are_in_the_code():
    syms = sh('readelf', '-sW', str(BUNDLE.parent.parent / '.build' / 'release' / 'nginx' / 'objs' / 'nginx'))
    if syms.returncode != 0:
        pytest.skip('unstripped build tree not present')
    assert '__stack_chk_fail' in syms.stdout
    assert re.search(r'__\w+_chk\b', syms.stdout.replace('__stack_chk_fail', ''))
