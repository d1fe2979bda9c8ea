# OpenSSL 3.5.  no-module: providers are compiled into libcrypto (nothing to
# dlopen in a static binary); no-dso/no-engine: no dynamic engines either.
# OPENSSLDIR=/etc/ssl is where most distros keep certs/ and openssl.cnf.
# --prefix is a fixed, path-independent value (libcrypto embeds it); the files
# are installed through DESTDIR and copied into $D.  A native build also gets
# bin/openssl, the CLI of the same tree (the tests' TLS client: the bundle's
# TLS against the very library it links); a cross build has none.
#
# Optimisation: OpenSSL's own (-O3 for its linux-* targets).  Configure puts
# the flags given on its command line after the target's, and gcc obeys the
# last -O, so passing NP_CFLAGS whole compiled OpenSSL at our -O2: the -O*
# flags are left out here and the hardening flags appended as they are
# (`openssl version -f` shows the result; a test checks it), with
# NP_NO_UNWIND_CFLAGS (flags.sh).
np_build_dep() {
    local cross=() cflags=() f
    [ -z "$NP_CROSS" ] || cross=(--cross-compile-prefix="$NP_CROSS")
    for f in $NP_CFLAGS $NP_NO_UNWIND_CFLAGS; do
        case $f in -O*) ;; *) cflags+=("$f") ;; esac
    done
    np_run ./Configure "$NP_OPENSSL_TARGET" "${cross[@]}" no-shared no-module no-dso no-engine no-tests \
        --prefix=/usr/local --libdir=lib --openssldir=/etc/ssl "${cflags[@]}"
    grep -q -- "-O3" configdata.pm && ! grep -q -- "-O2" configdata.pm \
        || np_die "OpenSSL's configuration does not compile with its own -O3 alone"
    np_run make -j"$NP_JOBS" build_libs
    np_run make install_dev DESTDIR="$work/root"
    cp -r "$work/root/usr/local/include" "$work/root/usr/local/lib" "$D/"
    if [ -z "$NP_CROSS" ]; then
        np_run make -j"$NP_JOBS" apps/openssl
        mkdir -p "$D/bin" && cp apps/openssl "$D/bin/openssl"
    fi
}
