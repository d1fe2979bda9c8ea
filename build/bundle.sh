#!/usr/bin/env bash
# Assemble the relocatable bundle from the linked binary, conf/ and the Lua
# runtime files, then pack the release tarball (release variant only).
#
#   NP_VARIANT=release -> dist/nginx-portable/ + dist/nginx-portable-VERSION-linux-x86_64.tar.gz
#   NP_ARCH=aarch64    -> dist/nginx-portable-aarch64/ + dist/nginx-portable-VERSION-linux-aarch64.tar.gz
#                         (whose top directory is nginx-portable/ too: one unpack instruction)
#   NP_VARIANT=asan    -> .build/asan/bundle/   (sanitizer test build, never released)
#   (NP_BUILD_DIR, NP_BUNDLE_OUT: another build dir / output dir, build/common.sh)
# Run by build/build.sh after nginx.sh.
. "$(dirname "$0")/common.sh"
. "$NP_ROOT/build/flags.sh"

variant=$NP_VARIANT
B=$NP_B
out=$NP_OUT

rm -rf "$out.tmp" && mkdir -p "$out.tmp"/{sbin,conf,logs,temp}
cp "$B/nginx/objs/nginx" "$out.tmp/sbin/nginx"
[ "$variant" = release ] && $NP_STRIP --strip-all "$out.tmp/sbin/nginx"
cp "$B/nginx/conf/mime.types" "$out.tmp/conf/"
cp -r "$NP_ROOT/conf/." "$out.tmp/conf/"
cp "$NP_ROOT/VERSION" "$out.tmp/VERSION"      # read by the default config's /metrics (build_info)
cp "$NP_ROOT/release/bundle-README.md" "$out.tmp/README.md"   # the tarball's README (systemd unit's Documentation=)
cp -r "$NP_LUALIB_STAGE" "$out.tmp/lualib"
touch "$out.tmp/logs/.keep" "$out.tmp/temp/.keep"
# Demo certificates: made once and cached, so rebuilds are byte-identical.
"$NP_ROOT/conf/demo/gen-certs.sh" "$NP_CACHE/demo-certs"
cp -p "$NP_CACHE/demo-certs"/* "$out.tmp/conf/demo/"
# Modes independent of the builder's umask: files rw-r--r-- (rwxr-xr-x if executable).
chmod -R u+rwX,go-w,go+rX "$out.tmp"
rm -rf "$out" && mv "$out.tmp" "$out"
np_log "bundle ready: $out"

[ "$out" = "$NP_ROOT/dist/$NP_DIST_NAME" ] || exit 0
version=$(cat "$NP_ROOT/VERSION")
tarball=$NP_ROOT/dist/nginx-portable-$version-linux-$NP_ARCH.tar.gz
# Reproducible: fixed order, owners and times; gzip without a name or time.
# Another arch's directory is named nginx-portable/ inside its tarball.
rename=()
[ "$NP_DIST_NAME" = nginx-portable ] || rename=(--transform="flags=r;s,^$NP_DIST_NAME,nginx-portable,")
(cd "$NP_ROOT/dist" && find "$NP_DIST_NAME" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} + \
  && tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
         --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
         "${rename[@]}" \
         -cf - "$NP_DIST_NAME" | gzip -9n > "$tarball")
(cd "$NP_ROOT/dist" && sha256sum "$(basename "$tarball")" > "$(basename "$tarball").sha256")
np_log "tarball: $tarball ($(du -h "$tarball" | cut -f1))"
