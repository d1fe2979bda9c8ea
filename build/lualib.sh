#!/usr/bin/env bash
# Stage the Lua runtime files into DEST: lua-resty-core and lua-resty-lrucache
# from Debian's binary packages, plus our own lualib/.  Plain source files,
# never bytecode.
. "$(dirname "$0")/common.sh"
dest=${1:?usage: lualib.sh DEST}
np_need_src lua-resty-core lua-resty-lrucache
rm -rf "$dest" && mkdir -p "$dest"
for c in lua-resty-core lua-resty-lrucache; do
    cp -r "$(np_srcdir "$c")"/usr/share/lua/5.1/. "$dest/"
done
cp -r "$NP_ROOT/lualib/." "$dest/"
find "$dest" -name .gitkeep -delete
