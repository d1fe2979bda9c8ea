#!/usr/bin/env bash
# Fetch every component of deps.lock, verify each file against its pinned
# SHA-256 and unpack it: a whole source package with Debian's patch series
# applied (dpkg-source -x), an orig-only input as the upstream tarball it is, a
# binary package with dpkg-deb, an upstream git tag's archive checked against
# its pinned git tree id.  Where a file comes from, first found wins:
#   1. the download cache ($NP_DOWNLOADS);
#   2. the local source mirror (np_sources_dir: NP_SOURCES, else ../shared/sources
#      beside the checkout): a file of the pinned name and SHA-256;
#   3. Debian's archive through apt with the private configuration of
#      build/apt.sh (derived from this machine's apt sources), or, for a git
#      tag, the forge's archive of the tag, kept when its tree id matches.
. "$(dirname "$0")/common.sh"
. "$NP_ROOT/build/apt.sh"

np_cache_lock fetch
mkdir -p "$NP_DOWNLOADS" "$NP_CACHE/src"

kind_of() {  # kind_of COMPONENT -> source|orig|binary|git
    if [ -n "$(np_lock_field "$1" git)" ]; then echo git
    else np_lock_field "$1" debian | awk '{ print $1 }'; fi
}

verify() {  # verify COMPONENT -> 0 when every pinned file is present and right
    local c=$1 name sum ok=0
    while read -r name sum; do
        [ -f "$NP_DOWNLOADS/$name" ] || mirror_copy "$c" "$name" "$sum"
        if [ ! -f "$NP_DOWNLOADS/$name" ]; then
            # a git tag's forge archive: other bytes, the same tree (unpack checks it)
            [ "$(kind_of "$c")" = git ] && [ -f "$NP_DOWNLOADS/forge/$name" ] || ok=1
            continue
        fi
        if ! echo "$sum  $NP_DOWNLOADS/$name" | sha256sum --quiet -c - >/dev/null 2>&1; then
            np_die "$c: $name does not match its pinned SHA-256 in build/deps.lock
  (expected $sum, got $(sha256sum "$NP_DOWNLOADS/$name" | cut -d' ' -f1)).
  Delete $NP_DOWNLOADS/$name to fetch it again, or update the lock deliberately."
        fi
    done < <(np_lock_field "$c" file)
    return $ok
}

mirror_copy() {  # mirror_copy COMPONENT NAME SHA256: take NAME from the local source mirror
    local c=$1 name=$2 sum=$3 dir
    dir=$(np_sources_dir)
    [ -n "$dir" ] && [ -f "$dir/$name" ] || return 0
    echo "$sum  $dir/$name" | sha256sum --quiet -c - >/dev/null 2>&1 \
        || np_die "$c: $dir/$name does not match its pinned SHA-256 in build/deps.lock
  (expected $sum, got $(sha256sum "$dir/$name" | cut -d' ' -f1)): the mirror holds another file."
    mkdir -p "$NP_DOWNLOADS" && cp "$dir/$name" "$NP_DOWNLOADS/$name.tmp" && mv "$NP_DOWNLOADS/$name.tmp" "$NP_DOWNLOADS/$name"
    np_log "$c: $name from the source mirror $dir"
}

# np_git_tree_id DIR -> the git tree id of DIR's files (what `git add -A -f &&
# git write-tree` prints inside it), without writing into DIR.
np_git_tree_id() {
    local g
    g=$(mktemp -d)
    GIT_DIR=$g git init -q
    GIT_DIR=$g GIT_WORK_TREE=$1 git -c core.autocrlf=false -c core.fileMode=true add -A -f
    GIT_DIR=$g GIT_WORK_TREE=$1 git write-tree
    rm -rf "$g"
}

download_tag() {  # download_tag COMPONENT: the forge's archive of the pinned tag
    local c=$1 repo tag commit tree name sum tmp
    read -r repo tag commit tree < <(np_lock_field "$c" git)
    read -r name sum < <(np_lock_field "$c" file)
    command -v curl >/dev/null || np_die "$c: curl is missing (build/install-deps.sh build)"
    tmp=$(mktemp -d)
    np_log "fetching $c ($repo tag $tag)"
    curl -fsSL --max-time 300 -o "$tmp/a.tar.gz" "$repo/archive/refs/tags/$tag.tar.gz" 2>"$tmp/err" \
        || { rm -rf "$tmp"; np_die "$c: $name is in neither the download cache ($NP_DOWNLOADS) nor a source
  mirror (NP_SOURCES=${NP_SOURCES:-unset}; ../shared/sources beside the checkout: $( [ -d "$NP_ROOT/../shared/sources" ] && echo present || echo absent)),
  and the tag's archive did not download from $repo.  Put $name (sha256 $sum) into
  either directory, or any archive of tag $tag whose tree is $tree into $NP_DOWNLOADS/forge/$name."; }
    mkdir -p "$tmp/tree" "$NP_DOWNLOADS/forge"
    tar -xzf "$tmp/a.tar.gz" -C "$tmp/tree" --strip-components=1 || np_die "$c: the forge archive does not unpack"
    [ "$(np_git_tree_id "$tmp/tree")" = "$tree" ] \
        || { rm -rf "$tmp"; np_die "$c: the forge's archive of $tag is not tree $tree (pinned in build/deps.lock)"; }
    mv "$tmp/a.tar.gz" "$NP_DOWNLOADS/forge/$name"
    rm -rf "$tmp"
}

download() {  # download COMPONENT: exactly the pinned files, each checked by apt
    local c=$1 kind pkg ver name sum uri
    [ "$(kind_of "$c")" = git ] && { download_tag "$c"; return 0; }
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
    kind=$(kind_of "$c")
    first=$(np_lock_field "$c" file | awk 'NR == 1 { print $1 }')
    rm -rf "$dest.tmp" && mkdir -p "$dest.tmp/tree"
    case $kind in
        git)
            local repo tag commit tree file=$NP_DOWNLOADS/$first
            read -r repo tag commit tree < <(np_lock_field "$c" git)
            [ -f "$file" ] || file=$NP_DOWNLOADS/forge/$first
            tar -xzf "$file" -C "$dest.tmp/tree" --strip-components=1 || np_die "$c: could not unpack $file"
            [ "$(np_git_tree_id "$dest.tmp/tree")" = "$tree" ] \
                || np_die "$c: $file unpacks to another tree than $tree (pinned in build/deps.lock)" ;;
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
        *)  np_die "$c: unknown kind '$kind' in build/deps.lock (debian source, orig, binary or git)" ;;
    esac
    mv "$dest.tmp/tree" "$dest"
    rm -rf "$dest.tmp"
}

for c in ${*:-$(np_components)}; do
    verify "$c" || { download "$c"; verify "$c" || np_die "$c: a pinned file is still missing after download"; }
    unpack "$c"
done
np_log "sources ready under $NP_CACHE/src"
