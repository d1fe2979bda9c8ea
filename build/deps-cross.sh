#!/usr/bin/env bash
# Cross-build the static C dependencies (zlib, PCRE2 with JIT, OpenSSL 3.5,
# LuaJIT) for NP_ARCH (build/arch.sh) from the same Debian-patched trees as
# deps.sh, into np_depsdir (deps-<arch>-<key>; the key names this recipe, the
# arch table and flags.sh).  The native x86_64 recipe is deps.sh, kept
# byte-for-byte so its warm cache keeps its key; fold the two together the
# next time deps.sh has to change anyway.
# No openssl CLI here: the tests use the x86_64 one as their TLS client.
. "$(dirname "$0")/common.sh"
. "$NP_ROOT/build/flags.sh"
np_target_flags
[ -n "$NP_CROSS" ] || np_die "deps-cross.sh is for NP_ARCH other than x86_64 (that is build/deps.sh)"
command -v "$NP_CC" >/dev/null || np_die "$NP_CC is missing: run build/install-deps.sh build"

D=$(np_depsdir)
[ -f "$D/.complete" ] && { np_log "$NP_ARCH dependencies cached in $D"; exit 0; }

np_need_src zlib pcre2 openssl luajit2
np_cache_lock "deps-$NP_ARCH"
[ -f "$D/.complete" ] && { np_log "$NP_ARCH dependencies cached in $D"; exit 0; }
# A fixed directory, as in deps.sh: recorded paths are the same on every machine.
work=/tmp/nginx-portable-deps-$NP_ARCH-$(np_cross_deps_key)
exec 8>"$work.lock" && flock 8
rm -rf "$D" "$work" && mkdir -p "$work"
logdir=$work/logs && mkdir -p "$logdir"
build=$(gcc -dumpmachine)

run() {  # run NAME CMD... : quiet unless it fails
    local name=$1; shift
    if ! "$@" >>"$logdir/$name.log" 2>&1; then
        tail -40 "$logdir/$name.log" >&2
        np_die "$name failed ($NP_ARCH); full log: $logdir/$name.log"
    fi
}

build_zlib() {
    cp -a "$(np_srcdir zlib)" "$work/zlib" && cd "$work/zlib"
    # zlib's configure is not autoconf: CHOST is its --host (it then uses
    # $CHOST-gcc, -ar, -ranlib).
    run zlib env CHOST="$NP_TRIPLET" CFLAGS="$NP_CFLAGS" ./configure --static --prefix="$D"
    run zlib make -j"$NP_JOBS" libz.a
    run zlib make install
}

build_pcre2() {
    cp -a "$(np_srcdir pcre2)" "$work/pcre2" && cd "$work/pcre2"
    # PCRE2's JIT (sljit) has an arm64 back end.
    run pcre2 ./configure --host="$NP_TRIPLET" --build="$build" --prefix="$D" \
        --disable-shared --enable-static --enable-jit \
        --enable-unicode --enable-pcre2-8 --disable-pcre2-16 --disable-pcre2-32 \
        --disable-pcre2grep-libz --disable-pcre2grep-libbz2 CFLAGS="$NP_CFLAGS"
    run pcre2 make -j"$NP_JOBS" libpcre2-8.la libpcre2-posix.la
    run pcre2 make install-libLTLIBRARIES install-includeHEADERS install-nodist_includeHEADERS
}

build_openssl() {
    cp -a "$(np_srcdir openssl)" "$work/openssl" && cd "$work/openssl"
    # Same options as deps.sh, with the target's assembler back end.
    run openssl ./Configure "$NP_OPENSSL_TARGET" --cross-compile-prefix="$NP_CROSS" \
        no-shared no-module no-dso no-engine no-tests \
        --prefix=/usr/local --libdir=lib --openssldir=/etc/ssl $NP_CFLAGS
    run openssl make -j"$NP_JOBS" build_libs
    run openssl make install_dev DESTDIR="$work/openssl-root"
    cp -r "$work/openssl-root/usr/local/include" "$work/openssl-root/usr/local/lib" "$D/"
}

build_luajit() {
    cp -a "$(np_srcdir luajit2)" "$work/luajit" && cd "$work/luajit"
    # LuaJIT builds its generators (minilua, buildvm) with HOST_CC for the
    # target's pointer size: a 64-bit host cc for a 64-bit target.  CFLAGS
    # reach both compilers, so the arm64-only flag goes in TARGET_CFLAGS.
    local common=${NP_CFLAGS/$NP_CF_PROTECTION/}
    run luajit make -j"$NP_JOBS" amalg BUILDMODE=static PREFIX=/usr/local \
        HOST_CC=gcc CROSS="$NP_CROSS" TARGET_SYS=Linux \
        CFLAGS="$common" TARGET_CFLAGS="$NP_CF_PROTECTION" Q=
    run luajit make install PREFIX=/usr/local DESTDIR="$work/luajit-root" \
        HOST_CC=gcc CROSS="$NP_CROSS" TARGET_SYS=Linux
    mkdir -p "$D/lib" "$D/include"
    cp "$work/luajit-root/usr/local/lib/libluajit-5.1.a" "$D/lib/"
    cp -r "$work/luajit-root/usr/local/include/luajit-2.1" "$D/include/"
}

mkdir -p "$D"
start=$SECONDS
for dep in zlib pcre2 openssl luajit; do
    np_log "building $dep ($NP_ARCH)"
    ( "build_$dep" )
done
rm -f "$D"/lib/*.so* "$D"/lib/*.la
rm -rf "$work"
touch "$D/.complete"
np_log "$NP_ARCH dependencies built in $((SECONDS - start)) s into $D"
