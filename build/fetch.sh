#!/usr/bin/env bash
# Fetch every component of deps.lock through Debian's archive, verify each file
# against its pinned SHA-256 and unpack it with Debian's patch series applied.
#
# apt is pointed at a private source list (deb + deb-src) derived from this
# machine's own apt sources (no archive host is written anywhere in the repo)
# and at private state and cache directories, so the host's apt configuration
# and its (maybe never updated) package lists are not touched.
. "$(dirname "$0")/common.sh"

np_cache_lock fetch
apt_dir=$NP_CACHE/apt
mkdir -p "$NP_DOWNLOADS" "$apt_dir/sources.list.d" "$apt_dir/lists/partial" \
         "$apt_dir/archives/partial" "$NP_CACHE/src"

derive_deb_src() {
    local out=$apt_dir/sources.list.d/deb-src.sources tmp
    tmp=$(mktemp)
    : > "$tmp"
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # deb822 stanzas: keep only "deb" ones, as "deb deb-src"
        awk 'BEGIN { RS = ""; ORS = "\n\n" }
             {
                 n = split($0, line, "\n"); keep = 0; out = ""
                 for (i = 1; i <= n; i++) {
                     if (line[i] ~ /^Types:/) {
                         if ((" " line[i] " ") ~ / deb /) keep = 1
                         line[i] = "Types: deb deb-src"
                     }
                     if (line[i] ~ /^Enabled: *no/) keep = 0
                     out = out line[i] "\n"
                 }
                 if (keep) print out
             }' "$f" >> "$tmp"
    done
    {
        [ -f /etc/apt/sources.list ] && cat /etc/apt/sources.list
        cat /etc/apt/sources.list.d/*.list 2>/dev/null || true
    } | awk '$1 == "deb" { print; $1 = "deb-src"; print }' > "$apt_dir/sources.list.d/deb-src.list"
    [ -s "$tmp" ] || [ -s "$apt_dir/sources.list.d/deb-src.list" ] \
        || np_die "no Debian apt source found in /etc/apt to derive a source list from"
    mv "$tmp" "$out"
}

apt_private() {
    "$@" -o Dir::Etc::SourceList=/dev/null \
         -o Dir::Etc::SourceParts="$apt_dir/sources.list.d" \
         -o Dir::State::Lists="$apt_dir/lists" \
         -o Dir::Cache::archives="$apt_dir/archives" \
         -o APT::Sandbox::User=root -qq
}

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

download() {  # download COMPONENT
    local c=$1 kind pkg ver
    read -r kind pkg ver < <(np_lock_field "$c" debian)
    np_log "fetching $c ($kind $pkg=$ver)"
    if [ "$(cat "$apt_dir/lists.stamp" 2>/dev/null)" != "deb+deb-src" ]; then
        derive_deb_src
        apt_private apt-get update || np_die "apt-get update of the private source list failed"
        echo "deb+deb-src" > "$apt_dir/lists.stamp"
    fi
    local rc=0
    if [ "$kind" = source ]; then
        (cd "$NP_DOWNLOADS" && apt_private apt-get source --download-only "$pkg=$ver") || rc=$?
    else
        (cd "$NP_DOWNLOADS" && apt_private apt-get download "$pkg=$ver") || rc=$?
    fi
    [ $rc -eq 0 ] || np_die "$c: apt could not download $pkg=$ver (the archive may no longer serve it).
  Pick a version that downloads ('apt-cache showsrc $pkg'), then update build/deps.lock,
  or fetch the upstream release listed there by hand into $NP_DOWNLOADS."
}

unpack() {  # unpack COMPONENT -> the patched tree at np_srcdir
    local c=$1 dest kind pkg ver
    dest=$(np_srcdir "$c")
    [ -d "$dest" ] && return 0
    read -r kind pkg ver < <(np_lock_field "$c" debian)
    rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
    if [ "$kind" = source ]; then
        local dsc
        dsc=$(np_lock_field "$c" file | awk '$1 ~ /\.dsc$/ { print $1 }')
        # dpkg-source applies debian/patches/series (the security fixes).
        dpkg-source --no-check -x "$NP_DOWNLOADS/$dsc" "$dest.tmp/tree" >/dev/null \
            || np_die "$c: dpkg-source could not unpack $dsc"
        mv "$dest.tmp/tree" "$dest"
    else
        local deb
        deb=$(np_lock_field "$c" file | awk '{ print $1 }')
        dpkg-deb -x "$NP_DOWNLOADS/$deb" "$dest.tmp/tree"
        mv "$dest.tmp/tree" "$dest"
    fi
    rm -rf "$dest.tmp"
}

for c in ${*:-$(np_components)}; do
    verify "$c" || { download "$c"; verify "$c" || np_die "$c: a pinned file is still missing after download"; }
    unpack "$c"
done
np_log "sources ready under $NP_CACHE/src"
