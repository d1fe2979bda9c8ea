#!/usr/bin/env bash
# Stage the Lua runtime files into DEST: the lib/ directories of the
# lua-resty-core and lua-resty-lrucache release tarballs (their .lua files, not
# the .md docs next to them), plus our own lualib/.  Plain source files, never
# bytecode.
. "$(dirname "$0")/common.sh"
dest=${1:?usage: lualib.sh DEST}
np_need_src lua-resty-core lua-resty-lrucache
rm -rf "$dest" && mkdir -p "$dest"
for c in lua-resty-core lua-resty-lrucache; do
    (cd "$(np_srcdir "$c")/lib" && find . -name '*.lua' -exec cp --parents {} "$dest/" \;)
done
cp -r "$NP_ROOT/lualib/." "$dest/"
find "$dest" -name .gitkeep -delete
