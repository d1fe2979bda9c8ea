# PCRE2: the 8-bit library only (nginx and lua-nginx-module use no other), with
# JIT (sljit has x86_64 and arm64 back ends).  Debian's diff touches sources
# only: the shipped configure stays valid.
np_build_dep() {
    # shellcheck disable=SC2046 # np_host_args is two words or none
    np_run ./configure $(np_host_args) --prefix="$D" --disable-shared --enable-static --enable-jit \
        --enable-unicode --enable-pcre2-8 --disable-pcre2-16 --disable-pcre2-32 \
        --disable-pcre2grep-libz --disable-pcre2grep-libbz2 CFLAGS="$NP_CFLAGS $NP_NO_UNWIND_CFLAGS"
    np_run make -j"$NP_JOBS" libpcre2-8.la libpcre2-posix.la
    np_run make install-libLTLIBRARIES install-includeHEADERS install-nodist_includeHEADERS
}
