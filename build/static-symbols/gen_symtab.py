#!/usr/bin/env python3
"""Generate the C table behind np_static_dlsym.c.

  gen_symtab.py --ffi-names LUALIB_DIR          print the non-nginx C names that
                                                 shipped Lua code declares with
                                                 ffi.cdef (to be forced into the link)
  gen_symtab.py --table OUT.c NAMES...|--from-binary BIN [--require LUALIB_DIR]
                                                 write the sorted name -> address table

The table holds address-of references (the linker fills the addresses, so
layout changes between link passes do not matter, and the references keep
every listed symbol alive).  It is compact (issue 29: 12,000 names, 0.5 MB
plus 0.6 MB of relocations as {name pointer, address} pairs; now ~0.2 MB and
no relocation at all), in .rodata:

  np_static_addrs[i]   a 32-bit offset from np_static_addrs to symbol i (a
                       PC-relative link-time constant, emitted with .long:
                       C has no such constant expression)
  np_static_names      the names in strcmp order, each as one byte: how many
                       leading bytes it shares with the name before it, then
                       the rest of the name and a NUL (front coding); every
                       BLOCK-th name shares nothing, and
  np_static_blocks[b]  is the offset of name b*BLOCK in np_static_names, so
                       np_static_dlsym.c bisects the blocks, then scans one.
"""
import argparse
import os
import re
import subprocess
import sys

IDENT = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')
CDEF = re.compile(r'ffi\.cdef\s*\(?\s*(\[(=*)\[.*?\]\2\]|"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')',
                  re.S)
C_KEYWORDS = {'if', 'while', 'for', 'return', 'sizeof', 'switch', 'typedef', 'struct',
              'union', 'enum', 'const', 'void', 'int', 'char', 'unsigned', 'signed',
              'long', 'short', 'double', 'float', 'static', 'extern', 'volatile'}
# Declared by resty.core but never called in this build: the stream subsystem
# (resty.core picks http at run time), macOS-only variants, and ngx.pipe and
# ngx.proxyssl / ngx.ssl.proxyssl* (lua-resty-core 0.1.33), whose C side is
# compiled only with OpenResty's nginx patches (absent here, as in Debian's module).
FOREIGN = re.compile(r'^ngx_stream_lua_|_macos$|^ngx_http_lua_ffi_pipe_|^ngx_http_lua_ffi_proxy_ssl_')


def ffi_declared_functions(lualib):
    """Names of functions declared in ffi.cdef blocks under lualib."""
    names = set()
    for root, _, files in os.walk(lualib):
        for f in files:
            if not f.endswith('.lua'):
                continue
            text = open(os.path.join(root, f), encoding='utf-8', errors='replace').read()
            for m in CDEF.finditer(text):
                body = re.sub(r'/\*.*?\*/', ' ', m.group(1), flags=re.S)
                # a function declaration: NAME( not preceded by '*' or '(' (pointers)
                for fm in re.finditer(r'(?<![\w*(])\s*\b([A-Za-z_]\w*)\s*\(', body):
                    name = fm.group(1)
                    prev = body[:fm.start(1)].rstrip()
                    if name in C_KEYWORDS or prev.endswith(('(*', '*)', '(')):
                        continue
                    names.add(name)
    return {n for n in names if not FOREIGN.search(n)}


def binary_symbols(binary):
    """(defined, imported): global symbols the binary defines, and those it
    takes from shared libraries (only a dynamic build, e.g. ASan, has any;
    the real dlsym finds those)."""
    out = subprocess.run(['readelf', '-Ws', '--wide', binary], check=True,
                         capture_output=True, text=True).stdout
    defined, imported = set(), set()
    for line in out.splitlines():
        f = line.split()
        # Num: Value Size Type Bind Vis Ndx Name
        if len(f) != 8 or f[4] not in ('GLOBAL', 'WEAK'):
            continue
        name = f[7].split('@')[0]
        if f[6] == 'UND':
            imported.add(name)
            continue
        if f[3] not in ('FUNC', 'OBJECT') or f[5] != 'DEFAULT':
            continue
        if IDENT.match(name) and not name.startswith(('__wrap_', '__real_', 'np_static_')):
            defined.add(name)
    return defined, imported


BLOCK = 16          # names per front-coded block (np_static_dlsym.c reads it)


def c_string(data):
    """bytes as a C string literal (octal escapes outside plain ASCII)."""
    out = []
    for b in data:
        c = chr(b)
        out.append(c if (c.isalnum() or c == '_') else '\\%03o' % b)
    return '"' + ''.join(out) + '"'


def write_table(path, names, keep=()):
    """The lookup table of `names` (defined in the binary being linked: a
    32-bit PC-relative offset reaches them, where a symbol of a shared library,
    in the dynamically linked ASan build, would need a GOT entry), plus plain
    pointers to the `keep` names, which only force them into the link (pass 1:
    libc functions only Lua code calls); the real dlsym finds those that a
    shared library defines."""
    names = sorted({n.encode() for n in names})   # strcmp order
    blob, blocks, prev = bytearray(), [], b''
    for i, n in enumerate(names):
        shared = 0
        if i % BLOCK == 0:
            blocks.append(len(blob))
        else:
            while shared < min(len(n), len(prev)) and n[shared] == prev[shared]:
                shared += 1
        if shared > 255:
            raise SystemExit('gen_symtab: %s shares more than 255 bytes with %s' % (n, prev))
        blob += bytes([shared]) + n[shared:] + b'\0'
        prev = n
    with open(path, 'w') as out:
        out.write('/* generated by build/static-symbols/gen_symtab.py; do not edit */\n')
        out.write('#include <stddef.h>\n#include <stdint.h>\n')
        out.write('const size_t np_static_symbols_n = %d;\n' % len(names))
        for n in sorted(keep):
            out.write('extern char %s[];\n' % n)
        out.write('__attribute__((used)) static void *const np_static_keep[] = {\n')
        for n in sorted(keep):
            out.write('    (void *) %s,\n' % n)
        out.write('    NULL\n};\n')
        out.write('const size_t np_static_symbols_block = %d;\n' % BLOCK)
        out.write('const uint32_t np_static_blocks[] = {\n')
        for i in range(0, len(blocks), 8):
            out.write('    %s,\n' % ', '.join(str(b) for b in blocks[i:i + 8]))
        out.write('    0\n};\n')
        out.write('const unsigned char np_static_names[%d] =\n' % max(len(blob), 1))
        for i in range(0, len(blob), 64):
            out.write('    %s\n' % c_string(blob[i:i + 64]))
        out.write('    ""\n;\n')
        # Quoted symbol names: an identifier can be a register name to the assembler.
        out.write('__asm__(\n'
                  '    "\\t.pushsection .rodata.np_static_addrs,\\"a\\"\\n"\n'
                  '    "\\t.balign 4\\n"\n'
                  '    "\\t.globl np_static_addrs\\n"\n'
                  '    "np_static_addrs:\\n"\n')
        for n in names:
            out.write('    "\\t.long \\"%s\\" - np_static_addrs\\n"\n' % n.decode())
        out.write('    "\\t.popsection\\n");\n')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--ffi-names')
    ap.add_argument('--table')
    ap.add_argument('--from-binary')
    ap.add_argument('--require', help='fail unless every ffi.cdef name under this dir is in the table')
    ap.add_argument('names', nargs='*')
    a = ap.parse_args()

    if a.ffi_names:
        print('\n'.join(sorted(n for n in ffi_declared_functions(a.ffi_names)
                               if not n.startswith('ngx_'))))
        return 0

    defined, imported = set(), set()
    if a.from_binary:
        defined, imported = binary_symbols(a.from_binary)
    if a.require:
        missing = sorted(ffi_declared_functions(a.require) - defined - set(a.names) - imported)
        if missing:
            sys.stderr.write('ffi.cdef names with no definition in the binary: %s\n'
                             % ' '.join(missing))
            return 1
    write_table(a.table, defined, keep=set(a.names) - defined)
    return 0


if __name__ == '__main__':
    sys.exit(main())
