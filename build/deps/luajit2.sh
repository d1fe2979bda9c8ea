# OpenResty's LuaJIT 2.1, BUILDMODE=static.  PREFIX stays /usr/local so its
# compiled-in package.path names the usual system directories, not this cache;
# DESTDIR puts the files here.  Cross: its generators (minilua, buildvm) run on
# the build machine and must have the target's pointer size (a 64-bit host cc
# for a 64-bit target); CFLAGS reach both compilers, so the target-only
# control-flow flag goes in TARGET_CFLAGS.
np_build_dep() {
    local args=(BUILDMODE=static PREFIX=/usr/local Q=) cflags=$NP_CFLAGS
    if [ -n "$NP_CROSS" ]; then
        args+=(HOST_CC=gcc CROSS="$NP_CROSS" TARGET_SYS=Linux TARGET_CFLAGS="$NP_CF_PROTECTION")
        cflags=${NP_CFLAGS/$NP_CF_PROTECTION/}
    fi
    np_run make -j"$NP_JOBS" amalg "${args[@]}" CFLAGS="$cflags"
    np_run make install "${args[@]}" DESTDIR="$work/root"
    mkdir -p "$D/lib" "$D/include"
    cp "$work/root/usr/local/lib/libluajit-5.1.a" "$D/lib/"
    cp -r "$work/root/usr/local/include/luajit-2.1" "$D/include/"
}
