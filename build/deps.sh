#!/usr/bin/env bash
# Build the static C dependencies (zlib, PCRE2 with JIT, OpenSSL 3.5, LuaJIT)
# for NP_ARCH (build/arch.sh: native x86_64, or cross-built for aarch64) from
# the trees fetch.sh unpacked (build.sh runs it first).  Each one is built by
# its recipe build/deps/NAME.sh into its own cached prefix, keyed by its own
# lock lines, that recipe, deps/recipe.sh, flags.sh and arch.sh (np_dep_key):
# a finished prefix is never rebuilt, and a bump of one component rebuilds
# only that component.  np_depsdir then joins the four prefixes (hard links)
# into the one include/ + lib/ + bin/ tree nginx.sh compiles against.
. "$(dirname "$0")/common.sh"
. "$NP_ROOT/build/flags.sh"
np_target_flags
[ -z "$NP_CROSS" ] || command -v "$NP_CC" >/dev/null \
    || np_die "$NP_CC is missing: run build/install-deps.sh build"

build_one() {  # build_one DEP -> its prefix, complete
    local dep=$1 D work src
    D=$(np_dep_prefix "$dep")
    [ -f "$D/.complete" ] && return 0
    np_need_src "$dep"
    np_cache_lock "dep-$NP_ARCH-$dep"
    [ -f "$D/.complete" ] && return 0
    src=$(np_srcdir "$dep")
    # Compiled in a fixed directory whatever the cache's location: source paths
    # (__FILE__, OpenSSL's recorded flags) are then the same on every machine.
    work=/tmp/nginx-portable-dep-$NP_ARCH-$dep-$(np_dep_key "$dep")
    exec 8>"$work.lock" && flock 8
    rm -rf "$D" "$work" && mkdir -p "$work" "$D"
    cp -a "$src" "$work/tree"
    np_log "building $dep ($NP_ARCH)"
    local start=$SECONDS
    (
        . "$NP_ROOT/build/deps/recipe.sh"
        . "$NP_ROOT/build/deps/$dep.sh"
        cd "$work/tree" && np_build_dep
    )
    rm -f "$D"/lib/*.so* "$D"/lib/*.la
    rm -rf "$work"
    touch "$D/.complete"
    np_log "$dep ($NP_ARCH) built in $((SECONDS - start)) s into $D"
}

all=$(np_depsdir)
[ -f "$all/.complete" ] && { np_log "dependencies cached in $all"; exit 0; }
for dep in $NP_DEPS; do ( build_one "$dep" ); done
np_cache_lock "deps-$NP_ARCH"
if [ ! -f "$all/.complete" ]; then
    rm -rf "$all.tmp" && mkdir -p "$all.tmp"
    for dep in $NP_DEPS; do
        cp -al "$(np_dep_prefix "$dep")/." "$all.tmp/"
    done
    rm -f "$all.tmp/.complete" && touch "$all.tmp/.complete"
    rm -rf "$all" && mv "$all.tmp" "$all"
fi
np_log "dependencies ready in $all"
