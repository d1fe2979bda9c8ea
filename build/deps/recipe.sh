# What every dependency recipe (build/deps/NAME.sh) may use; sourced by
# build/deps.sh in a subshell per dependency, never run.  Part of every
# dependency's cache key (build/common.sh np_dep_key), so keep it small.
#
#   $src   the unpacked source tree (read-only: the recipe builds in a copy)
#   $work  an empty directory at a fixed path (recorded paths are then the same
#          on every machine)
#   $D     the dependency's own prefix: include/, lib/ (and bin/)
#   NP_CC, NP_CROSS, NP_TRIPLET, NP_OPENSSL_TARGET, NP_CF_PROTECTION (arch.sh),
#   NP_CFLAGS (flags.sh, with the target's control-flow flag)
# A recipe defines np_build_dep; deps.sh calls it in $work/tree.

np_run() {  # np_run CMD... : quiet unless it fails
    if ! "$@" >>"$work/build.log" 2>&1; then
        tail -40 "$work/build.log" >&2
        np_die "$dep ($NP_ARCH) failed; full log: $work/build.log"
    fi
}
# autoconf's cross-compilation pair, empty for a native build.
np_host_args() {
    [ -n "$NP_CROSS" ] || return 0
    echo "--host=$NP_TRIPLET --build=$(gcc -dumpmachine)"
}
