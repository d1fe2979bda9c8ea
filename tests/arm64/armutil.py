"""Shared by the arm64 tier: is the bundle under test aarch64, how to run
things under qemu, and the generous deadlines emulation needs (qemu-user
runs nginx and LuaJIT roughly ten times slower than the host)."""
import shutil
import subprocess

import pytest

from support.bundle import BUNDLE, EXEC_WRAPPER, ROOT

# Emulation is ~10x slower: every wait here is at least this many times the
# native suite's.
SLOW = 10
NGINX = BUNDLE / 'sbin' / 'nginx'
VERSION = (ROOT / 'VERSION').read_text().strip()


def elf_machine(path):
    r = subprocess.run(['readelf', '-hW', str(path)], capture_output=True, text=True)
    return next((l.split(':', 1)[1].strip() for l in r.stdout.splitlines()
                 if l.strip().startswith('Machine:')), None)


IS_AARCH64 = elf_machine(NGINX) == 'AArch64'

# The arm64 tier runs as `NP_ARCH=aarch64 tests/run.sh tests/arm64` (make
# test-arm64); in the x86_64 tiers these tests say why they do not run.
arm64_only = [
    pytest.mark.skipif(not IS_AARCH64, reason='the bundle under test is not aarch64 '
                       '(make test-arm64 runs this folder)'),
    pytest.mark.skipif(not EXEC_WRAPPER or not shutil.which(EXEC_WRAPPER[0]),
                       reason='no emulator: NP_EXEC_WRAPPER=qemu-aarch64-static (tests/run.sh sets it)'),
]


def run_target(*args, timeout=30 * SLOW, **kw):
    """Run the aarch64 nginx under the emulator."""
    return subprocess.run([*EXEC_WRAPPER, str(NGINX), *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


def cross_tool(name):
    return 'aarch64-linux-gnu-' + name
