#!/usr/bin/env bash
# Stage the Lua runtime files into DEST: lua-resty-core and lua-resty-lrucache
# from Debian's binary packages, plus our own lualib/.  Plain source files,
# never bytecode.
. "$(dirname "$0")/common.sh"
dest=${1:?usage: lualib.sh DEST}
"$NP_ROOT/build/fetch.sh" lua-resty-core lua-resty-lrucache
rm -rf "$dest" && mkdir -p "$dest"
for c in lua-resty-core lua-resty-lrucache; do
    cp -r "$(np_srcdir "$c")"/usr/share/lua/5.1/. "$dest/"
done
# Our fixes to Debian's Lua files (build/patches/lua-resty-*/), then our own.
for p in "$NP_ROOT"/build/patches/lua-resty-*/*.patch; do
    [ -f "$p" ] || continue
    patch -s -p1 -d "$dest" < "$p" || np_die "patch $p does not apply"
done
cp -r "$NP_ROOT/lualib/." "$dest/"
find "$dest" -name .gitkeep -delete
