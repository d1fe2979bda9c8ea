#!/usr/bin/env bash
# Fetch every component of deps.lock through Debian's archive, verify each file
# against its pinned SHA-256 and unpack it: a whole source package with Debian's
# patch series applied (dpkg-source -x), an orig-only input as the upstream
# tarball it is, a binary package with dpkg-deb.  apt runs with the private
# configuration of build/apt.sh (derived from this machine's apt sources).
. "$(dirname "$0")/common.sh"
. "$NP_ROOT/build/apt.sh"

np_cache_lock fetch
mkdir -p "$NP_DOWNLOADS" "$NP_CACHE/src"

verify() {  # verify COMPONENT -> 0 when every pinned file is present and right
    local c=$1 name sum ok=0
    while read -r name sum; do
        if [ ! -f "$NP_DOWNLOADS/$name" ]; then ok=1; continue; fi
        if ! echo "$sum  $NP_DOWNLOADS/$name" | sha256sum --quiet -c - >/dev/null 2>&1; then
            np_die "$c: $name does not match its pinned SHA-256 in build/deps.lock
  (expected $sum, got $(sha256sum "$NP_DOWNLOADS/$name" | cut -d' ' -f1)).
  Delete $NP_DOWNLOADS/$name to fetch it again, or update the lock deliberately."
        fi
    done < <(np_lock_field "$c" file)
    return $ok
}

download() {  # download COMPONENT: exactly the pinned files, each checked by apt
    local c=$1 kind pkg ver name sum uri
    read -r kind pkg ver < <(np_lock_field "$c" debian)
    np_log "fetching $c ($kind $pkg=$ver)"
    np_apt_ready
    if [ "$kind" = binary ]; then
        (cd "$NP_DOWNLOADS" && np_apt apt-get download "$pkg=$ver") \
            || np_die "$c: apt could not download $pkg=$ver (the archive may no longer serve it)"
        return 0
    fi
    local uris
    uris=$(np_apt_uris "$pkg=$ver")
    [ -n "$uris" ] || np_die "$c: apt knows no source package $pkg=$ver (build/check-updates lists what it serves)"
    while read -r name sum; do
        [ -f "$NP_DOWNLOADS/$name" ] && continue
        uri=$(awk -v n="$name" '$2 == n { print $1 }' <<< "$uris")
        [ -n "$uri" ] || np_die "$c: $pkg=$ver has no file $name"
        np_apt_download_file "$uri" "$NP_DOWNLOADS/$name" "$sum" \
            || np_die "$c: $name did not download (the archive may no longer serve it).
  build/check-updates lists the versions that download; build/bump pins one.
  Or fetch the upstream release listed in build/deps.lock by hand into $NP_DOWNLOADS."
    done < <(np_lock_field "$c" file)
}

unpack() {  # unpack COMPONENT -> the tree at np_srcdir
    local c=$1 dest kind pkg ver first
    dest=$(np_srcdir "$c")
    [ -d "$dest" ] && return 0
    read -r kind pkg ver < <(np_lock_field "$c" debian)
    first=$(np_lock_field "$c" file | awk 'NR == 1 { print $1 }')
    rm -rf "$dest.tmp" && mkdir -p "$dest.tmp/tree"
    case $kind in
        source)
            local dsc
            dsc=$(np_lock_field "$c" file | awk '$1 ~ /\.dsc$/ { print $1 }')
            [ -n "$dsc" ] || np_die "$c: a 'debian source' component needs its .dsc pinned (or use 'debian orig')"
            rm -rf "$dest.tmp/tree"
            # dpkg-source applies debian/patches/series (the security fixes).
            dpkg-source --no-check -x "$NP_DOWNLOADS/$dsc" "$dest.tmp/tree" >/dev/null \
                || np_die "$c: dpkg-source could not unpack $dsc" ;;
        orig)
            tar -xf "$NP_DOWNLOADS/$first" -C "$dest.tmp/tree" --strip-components=1 \
                || np_die "$c: could not unpack $first" ;;
        binary)
            dpkg-deb -x "$NP_DOWNLOADS/$first" "$dest.tmp/tree" ;;
        *)  np_die "$c: unknown kind '$kind' in build/deps.lock (source, orig or binary)" ;;
    esac
    mv "$dest.tmp/tree" "$dest"
    rm -rf "$dest.tmp"
}

for c in ${*:-$(np_components)}; do
    verify "$c" || { download "$c"; verify "$c" || np_die "$c: a pinned file is still missing after download"; }
    unpack "$c"
done
np_log "sources ready under $NP_CACHE/src"
