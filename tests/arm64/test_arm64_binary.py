"""The aarch64 binary: a hardened static-pie for ARM aarch64 (branch
protection instead of x86's CET), from the same configure line, naming no
build path, and running under qemu-aarch64-static."""
import re
import subprocess

import pytest

from armutil import NGINX, arm64_only, cross_tool, run_target
from support.bundle import ROOT
from support.lock import locked_version

pytestmark = arm64_only
UNSTRIPPED = ROOT / '.build' / 'aarch64' / 'nginx' / 'objs' / 'nginx'


def sh(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_file_says_aarch64_static_pie_with_only_relative_relocations():
    out = sh('file', '-L', str(NGINX)).stdout
    assert 'ARM aarch64' in out and 'static-pie linked' in out, out
    headers = sh('readelf', '-lW', str(NGINX)).stdout
    assert 'INTERP' not in headers
    assert re.search(r'^\s*GNU_RELRO', headers, re.M)
    assert 'RWE' not in re.search(r'^\s*GNU_STACK.*$', headers, re.M).group(0)
    assert 'DYN' in sh('readelf', '-hW', str(NGINX)).stdout
    dyn = sh('readelf', '-dW', str(NGINX)).stdout
    assert 'BIND_NOW' in dyn or 'FLAGS_1' in dyn and 'NOW' in dyn, dyn
    # -Wl,-E would turn libc's TLS references into symbolic relocations
    # glibc's static-pie self-relocator cannot resolve.
    # (R_AARCH64_NONE: slots GNU ld leaves when it resolves a GOT entry at link
    # time; a no-op the self-relocator skips.)
    kinds = set(re.findall(r'\bR_AARCH64_\w+', sh('readelf', '-rW', str(NGINX)).stdout))
    assert 'R_AARCH64_RELATIVE' in kinds
    assert kinds <= {'R_AARCH64_RELATIVE', 'R_AARCH64_IRELATIVE', 'R_AARCH64_NONE'}, kinds


def test_stripped_binary_is_under_10_5_mb():
    """Issue 29: 10.71 MB before OpenSSL, PCRE2 and zlib lost their unwind
    tables (this binutils packs no DT_RELR for aarch64)."""
    size = NGINX.stat().st_size
    assert size < 10500000, size
    assert '.symtab' not in sh('readelf', '-SW', str(NGINX)).stdout


def test_version_runs_under_qemu_and_names_the_arm64_hardening():
    r = run_target('-V')
    out = r.stderr
    assert r.returncode == 0, out
    assert 'nginx version: nginx/%s\n' % locked_version('nginx') in out
    assert 'built with OpenSSL %s ' % locked_version('openssl') in out
    for flag in ('--with-http_ssl_module', '--with-http_v2_module', '--with-stream',
                 '--with-pcre-jit', 'ngx_devel_kit', 'lua-nginx-module',
                 '-mbranch-protection=standard', '-fstack-protector-strong', '-fstack-clash-protection',
                 '-D_FORTIFY_SOURCE=2', '-Wl,-z,relro,-z,now', '-static-pie'):
        assert flag in out, flag
    assert '-fcf-protection' not in out           # x86 only
    assert '/root/' not in out and '/work/' not in out and '.cache' not in out


def test_code_has_pointer_authentication_and_no_build_path():
    if not UNSTRIPPED.is_file():
        pytest.skip('unstripped build tree not present')
    # -mbranch-protection=standard: functions sign their return address
    # (paciasp / hint #25) and start with a BTI landing pad (hint #34).  BTI is
    # not enforced: LuaJIT's lj_vm.o has no BTI property, so neither has the
    # binary (build/README.md).
    dis = sh(cross_tool('objdump'), '-d', '--no-show-raw-insn', str(UNSTRIPPED)).stdout
    assert dis.count('paciasp') > 1000, dis.count('paciasp')
    assert dis.count('bti\tc') > 1000, dis.count('bti\tc')
    syms = sh('readelf', '-sW', str(UNSTRIPPED)).stdout
    assert '__stack_chk_fail' in syms
    data = NGINX.read_bytes() + UNSTRIPPED.read_bytes()
    for p in (str(ROOT), '/root/', '/.cache/', '-ffile-prefix-map='):
        assert p.encode() not in data, p
