#!/usr/bin/env bash
# Build the static C dependencies (zlib, PCRE2 with JIT, OpenSSL 3.5, LuaJIT)
# from the Debian-patched trees fetch.sh unpacked (build.sh runs it first),
# into one cached prefix keyed by the lock file and the flags (np_depsdir).
# The prefix also gets bin/openssl, the CLI of the same OpenSSL tree (a test
# client: the bundle's TLS against the very library it links).  A finished
# prefix is never rebuilt.
. "$(dirname "$0")/common.sh"
. "$NP_ROOT/build/flags.sh"

D=$(np_depsdir)
[ -f "$D/.complete" ] && { np_log "dependencies cached in $D"; exit 0; }

np_need_src zlib pcre2 openssl luajit2
np_cache_lock deps
[ -f "$D/.complete" ] && { np_log "dependencies cached in $D"; exit 0; }
# Compiled in a fixed directory whatever the cache's location: source paths
# (__FILE__, OpenSSL's recorded flags) are then the same on every machine.
work=/tmp/nginx-portable-deps-$(np_deps_key)
exec 8>"$work.lock" && flock 8
rm -rf "$D" "$work" && mkdir -p "$work"
logdir=$work/logs && mkdir -p "$logdir"

run() {  # run NAME CMD... : quiet unless it fails
    local name=$1; shift
    if ! "$@" >>"$logdir/$name.log" 2>&1; then
        tail -40 "$logdir/$name.log" >&2
        np_die "$name failed; full log: $logdir/$name.log"
    fi
}

build_zlib() {
    cp -a "$(np_srcdir zlib)" "$work/zlib" && cd "$work/zlib"
    run zlib env CFLAGS="$NP_CFLAGS" ./configure --static --prefix="$D"
    run zlib make -j"$NP_JOBS" libz.a
    run zlib make install
}

build_pcre2() {
    cp -a "$(np_srcdir pcre2)" "$work/pcre2" && cd "$work/pcre2"
    # The 8-bit library only (nginx and lua-nginx-module use no other), with JIT.
    # Debian's diff touches sources only: the shipped configure stays valid.
    run pcre2 ./configure --prefix="$D" --disable-shared --enable-static --enable-jit \
        --enable-unicode --enable-pcre2-8 --disable-pcre2-16 --disable-pcre2-32 \
        --disable-pcre2grep-libz --disable-pcre2grep-libbz2 CFLAGS="$NP_CFLAGS"
    run pcre2 make -j"$NP_JOBS" libpcre2-8.la libpcre2-posix.la
    run pcre2 make install-libLTLIBRARIES install-includeHEADERS install-nodist_includeHEADERS
}

build_openssl() {
    cp -a "$(np_srcdir openssl)" "$work/openssl" && cd "$work/openssl"
    # no-module: providers are compiled into libcrypto (nothing to dlopen in a
    # static binary); no-dso/no-engine: no dynamic engines either.
    # OPENSSLDIR=/etc/ssl is where most distros keep certs/ and openssl.cnf.
    # --prefix is a fixed, path-independent value (libcrypto embeds it); the
    # files are installed through DESTDIR and copied here.
    run openssl ./Configure linux-x86_64 no-shared no-module no-dso no-engine no-tests \
        --prefix=/usr/local --libdir=lib --openssldir=/etc/ssl $NP_CFLAGS
    run openssl make -j"$NP_JOBS" build_libs
    run openssl make -j"$NP_JOBS" apps/openssl
    run openssl make install_dev DESTDIR="$work/openssl-root"
    cp -r "$work/openssl-root/usr/local/include" "$work/openssl-root/usr/local/lib" "$D/"
    mkdir -p "$D/bin" && cp apps/openssl "$D/bin/openssl"
}

build_luajit() {
    cp -a "$(np_srcdir luajit2)" "$work/luajit" && cd "$work/luajit"
    # PREFIX stays /usr/local so LuaJIT's compiled-in package.path names the
    # usual system directories, not this cache; DESTDIR puts the files here.
    run luajit make -j"$NP_JOBS" amalg BUILDMODE=static PREFIX=/usr/local \
        CFLAGS="$NP_CFLAGS" Q=
    run luajit make install PREFIX=/usr/local DESTDIR="$work/luajit-root"
    mkdir -p "$D/lib" "$D/include"
    cp "$work/luajit-root/usr/local/lib/libluajit-5.1.a" "$D/lib/"
    cp -r "$work/luajit-root/usr/local/include/luajit-2.1" "$D/include/"
    cp "$work/luajit-root/usr/local/bin/luajit"* "$D/bin-luajit" 2>/dev/null || true
}

mkdir -p "$D"
start=$SECONDS
for dep in zlib pcre2 openssl luajit; do
    np_log "building $dep"
    ( "build_$dep" )
done
rm -f "$D"/lib/*.so* "$D"/lib/*.la
rm -rf "$work"
touch "$D/.complete"
np_log "dependencies built in $((SECONDS - start)) s into $D"
