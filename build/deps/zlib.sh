# zlib, static.  Its configure is not autoconf: CHOST is its --host (it then
# uses $CHOST-gcc, -ar, -ranlib).
np_build_dep() {
    local chost=()
    [ -z "$NP_CROSS" ] || chost=(CHOST="$NP_TRIPLET")
    np_run env "${chost[@]}" CFLAGS="$NP_CFLAGS $NP_NO_UNWIND_CFLAGS" ./configure --static --prefix="$D"
    np_run make -j"$NP_JOBS" libz.a
    np_run make install
}
