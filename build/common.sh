# Shared by the build scripts: paths, the lock-file reader, logging.
# Sourced, never run.

set -euo pipefail

NP_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# NP_LOCK_FILE: another lock (tests of the cache keys); the build reads build/deps.lock.
NP_LOCK=${NP_LOCK_FILE:-$NP_ROOT/build/deps.lock}
# Downloads and dependency builds live outside the work tree, keyed by the lock.
NP_CACHE=${NGINX_PORTABLE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nginx-portable}
NP_DOWNLOADS=$NP_CACHE/downloads
NP_JOBS=${NP_JOBS:-$(nproc)}
. "$NP_ROOT/build/arch.sh"

np_log() { printf '[build] %s\n' "$*" >&2; }
np_die() { printf '[build] error: %s\n' "$*" >&2; exit 1; }

# Cache keys.  Each component's unpacked source is keyed by its own lock lines,
# and each dependency's build by those lines, its recipe (build/deps/NAME.sh),
# the shared recipe helpers and the flags: a bump of nginx or of a Lua module
# leaves OpenSSL, PCRE2, zlib and LuaJIT cached for every architecture.
# Only the lines that select inputs count (not comments or upstream URLs).
np_lock_inputs() { grep -Ev '^[[:space:]]*(#|upstream[[:space:]]|$)' "$NP_LOCK"; }
# np_lock_component C -> that component's input lines (and the source date)
np_lock_component() {
    awk -v c="$1" '
        /^[[:space:]]*#/ || NF == 0 || $1 == "upstream" { next }
        $1 == "source-date-epoch" { print; next }
        $1 == "component" { cur = $2 }
        cur == c { print }
    ' "$NP_LOCK"
}
np_comp_key() { np_lock_component "$1" | sha256sum | cut -c1-16; }
# The C libraries deps.sh builds, one cached prefix each.
NP_DEPS="zlib pcre2 openssl luajit2"
np_dep_key() {  # np_dep_key DEP -> key of DEP's build for NP_ARCH
    (np_lock_component "$1"; echo "$NP_ARCH"
     cat "$NP_ROOT/build/deps/$1.sh" "$NP_ROOT/build/deps/recipe.sh" \
         "$NP_ROOT/build/flags.sh" "$NP_ROOT/build/arch.sh") | sha256sum | cut -c1-16
}
np_dep_prefix() { echo "$NP_CACHE/dep/$NP_ARCH/$1-$(np_dep_key "$1")"; }

# np_lock_field COMPONENT KEYWORD -> the rest of that component's KEYWORD lines
np_lock_field() {
    awk -v c="$1" -v k="$2" '
        /^#/ || NF == 0 { next }
        $1 == "component" { cur = $2; next }
        cur == c && $1 == k { $1 = ""; sub(/^ /, ""); print }
    ' "$NP_LOCK"
}

np_components() { awk '$1 == "component" { print $2 }' "$NP_LOCK"; }
np_version() { awk -v c="$1" '$1 == "component" && $2 == c { print $3 }' "$NP_LOCK"; }
np_source_date_epoch() { awk '$1 == "source-date-epoch" { print $2 }' "$NP_LOCK"; }

# The unpacked (Debian-patched, or tree-verified) source tree of a component.
np_srcdir() { echo "$NP_CACHE/src/$1-$(np_comp_key "$1")"; }
# Static libraries and headers of OpenSSL, PCRE, zlib and LuaJIT for NP_ARCH:
# one directory of hard links over the four prefixes, named by their keys.
np_depsdir() {
    local d keys=
    for d in $NP_DEPS; do keys="$keys $(np_dep_key "$d")"; done
    echo "$NP_CACHE/deps-$NP_ARCH-$(echo "$keys" | sha256sum | cut -c1-16)"
}
# The local source mirror (upstream-tag tarballs, ../shared/sources/README.md):
# NP_SOURCES, else the sources/ of a shared/ directory beside the checkout.
np_sources_dir() {
    if [ -n "${NP_SOURCES:-}" ]; then echo "$NP_SOURCES"
    elif [ -d "$NP_ROOT/../shared/sources" ]; then (cd "$NP_ROOT/../shared/sources" && pwd)
    fi
}

# One place for the variant and its directories (every script uses these):
#   NP_VARIANT=release (default) | asan   flags, and the build dir .build/<variant>/
#   NP_BUILD_DIR=DIR                       another build dir (parallel work)
#   NP_BUNDLE_OUT=DIR                      another bundle dir
#   NP_ARCH=x86_64 (default) | aarch64     build/arch.sh; aarch64 builds in
#                                          .build/aarch64/, bundle dist/nginx-portable-aarch64
# The release variant in the default build dir is the one that is released:
# dist/nginx-portable (dist/nginx-portable-<arch> for another arch) plus the tarball.
NP_VARIANT=${NP_VARIANT:-release}
if [ "$NP_ARCH" = x86_64 ]; then NP_DIST_NAME=nginx-portable; NP_DEFAULT_B=$NP_ROOT/.build/$NP_VARIANT
else NP_DIST_NAME=nginx-portable-$NP_ARCH; NP_DEFAULT_B=$NP_ROOT/.build/$NP_ARCH; fi
NP_B=${NP_BUILD_DIR:-$NP_DEFAULT_B}
NP_LUALIB_STAGE=$NP_B/lualib-stage
if [ -n "${NP_BUNDLE_OUT:-}" ]; then NP_OUT=$NP_BUNDLE_OUT
elif [ "$NP_VARIANT" = release ] && [ -z "${NP_BUILD_DIR:-}" ]; then NP_OUT=$NP_ROOT/dist/$NP_DIST_NAME
else NP_OUT=$NP_B/bundle; fi
case $NP_VARIANT in release|asan) ;; *) np_die "NP_VARIANT must be release or asan, not '$NP_VARIANT'" ;; esac
# The sanitizer runtimes are dynamic and host-only: the ASan tier is x86_64's.
[ "$NP_VARIANT" = release ] || [ "$NP_ARCH" = x86_64 ] || np_die "NP_VARIANT=$NP_VARIANT is built for x86_64 only"

# np_need_src COMPONENT...: fail clearly when fetch.sh has not run.
np_need_src() {
    local c
    for c in "$@"; do
        [ -d "$(np_srcdir "$c")" ] || np_die "sources of $c are not unpacked: run build/build.sh (it fetches once)"
    done
}

# Serialise cache writers (parallel builds share the cache): holds until exit.
np_cache_lock() {
    mkdir -p "$NP_CACHE"
    exec 9>"$NP_CACHE/.lock-$1"
    flock 9
}
