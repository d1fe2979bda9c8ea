#!/usr/bin/env python3
"""Recompute the GNU build-id of a stripped ELF file from its own bytes.

The linker's build-id is a hash of the *unstripped* output, so it covers the
debug sections, and with them the build directory (DW_AT_comp_dir).  Two
builds of the same sources in different directories would then ship stripped
binaries that differ only in these 20 bytes.  After `strip`, this replaces the
build-id with SHA-1 of the file with the build-id bytes zeroed: the id still
identifies the shipped bytes, and no longer depends on where it was built.

    build-id.py FILE          rewrite in place, print the new id
    build-id.py --check FILE  exit 1 unless the id matches the content
"""
import hashlib
import struct
import sys

NT_GNU_BUILD_ID = 3


def find_build_id(data):
    """(offset, size) of the build-id descriptor, from the PT_NOTE segments."""
    if data[:4] != b'\x7fELF' or data[4] != 2 or data[5] != 1:
        raise SystemExit('not a little-endian ELF64 file')
    e_phoff, = struct.unpack_from('<Q', data, 0x20)
    e_phentsize, e_phnum = struct.unpack_from('<HH', data, 0x36)
    for i in range(e_phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from('<IIQQQQ', data, e_phoff + i * e_phentsize)
        if p_type != 4:        # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from('<III', data, pos)
            name_at = pos + 12
            desc_at = name_at + ((namesz + 3) & ~3)
            if ntype == NT_GNU_BUILD_ID and data[name_at:name_at + namesz] == b'GNU\0':
                return desc_at, descsz
            pos = desc_at + ((descsz + 3) & ~3)
    raise SystemExit('no GNU build-id note')


def content_id(data, off, size):
    zeroed = data[:off] + b'\0' * size + data[off + size:]
    return hashlib.sha1(zeroed).digest()[:size].ljust(size, b'\0')


def main(argv):
    check = argv[1:2] == ['--check']
    path = argv[-1]
    with open(path, 'rb') as f:
        data = bytearray(f.read())
    off, size = find_build_id(data)
    new = content_id(data, off, size)
    if check:
        ok = bytes(data[off:off + size]) == new
        print(new.hex(), 'ok' if ok else 'MISMATCH (have %s)' % data[off:off + size].hex())
        return 0 if ok else 1
    data[off:off + size] = new
    with open(path, 'r+b') as f:
        f.seek(off)
        f.write(new)
    print(new.hex())
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
