# The private apt configuration that fetch.sh, check-updates and bump share.
# Sourced after common.sh, never run.
#
# apt is pointed at a private source list derived from this machine's own apt
# sources (no archive host is written anywhere in the repo) and at private
# state and cache directories, so the host's apt configuration and its (maybe
# never updated) package lists are not touched.  Every Debian stanza of the
# host ("deb" lines and deb822 "Types: deb") is kept as deb + deb-src, and is
# repeated as deb-src for the newer suites in NP_APT_SUITES: same URIs and
# components, the host's codename replaced (bookworm-security becomes
# trixie-security, ...).  Suites without updates/security pockets (sid) get the
# base suite only.

NP_APT_SUITES=${NP_APT_SUITES:-trixie forky sid}
NP_APT_DIR=$NP_CACHE/apt-$(echo "v2 $NP_APT_SUITES" | sha256sum | cut -c1-8)

# np_apt_derive: write the private source list (the host codename is the first
# suite of a stanza without a '-').
np_apt_derive() {
    local out=$NP_APT_DIR/sources.list.d tmp
    mkdir -p "$out" "$NP_APT_DIR/lists/partial" "$NP_APT_DIR/archives/partial"
    tmp=$(mktemp)
    {
        for f in /etc/apt/sources.list.d/*.sources; do [ -f "$f" ] && cat "$f" && echo; done
        # one-line format, turned into deb822 stanzas
        { [ -f /etc/apt/sources.list ] && cat /etc/apt/sources.list
          cat /etc/apt/sources.list.d/*.list 2>/dev/null || true; } |
            sed 's/\[[^]]*\]//' |
            awk '$1 == "deb" { printf "Types: deb\nURIs: %s\nSuites: %s\nComponents:", $2, $3
                                                for (i = 4; i <= NF; i++) printf " %s", $i; print "\n" }'
    } | awk -v newer="$NP_APT_SUITES" '
        BEGIN { RS = ""; ORS = "\n" }
        {
            n = split($0, line, "\n"); keep = 0; suites = ""; rest = ""
            for (i = 1; i <= n; i++) {
                if (line[i] ~ /^#/) continue
                if (line[i] ~ /^Types:/) { if ((" " line[i] " ") ~ / deb /) keep = 1; continue }
                if (line[i] ~ /^Enabled: *no/) keep = 0
                if (line[i] ~ /^Suites:/) { suites = line[i]; sub(/^Suites: */, "", suites); continue }
                rest = rest line[i] "\n"
            }
            if (!keep || suites == "") next
            printf "Types: deb deb-src\nSuites: %s\n%s\n", suites, rest
            ns = split(suites, s, " "); code = ""
            for (i = 1; i <= ns; i++) if (s[i] !~ /-/) { code = s[i]; break }
            if (code == "") { code = s[1]; sub(/-.*/, "", code) }
            nn = split(newer, nw, " ")
            for (j = 1; j <= nn; j++) {
                out = ""
                for (i = 1; i <= ns; i++) {
                    if (index(s[i], code) != 1) continue
                    suffix = substr(s[i], length(code) + 1)
                    if (nw[j] == "sid" && suffix != "") continue
                    out = out " " nw[j] suffix
                }
                if (out != "") printf "Types: deb-src\nSuites:%s\n%s\n", out, rest
            }
        }' > "$tmp"
    grep -q '^Types: deb deb-src' "$tmp" || { rm -f "$tmp"; np_die "no Debian apt source found in /etc/apt to derive a source list from"; }
    rm -f "$out"/*
    mv "$tmp" "$out/np.sources"
}

np_apt() {
    "$@" -o Dir::Etc::SourceList=/dev/null \
         -o Dir::Etc::SourceParts="$NP_APT_DIR/sources.list.d" \
         -o Dir::State::Lists="$NP_APT_DIR/lists" \
         -o Dir::Cache::archives="$NP_APT_DIR/archives" \
         -o APT::Sandbox::User=root -qq
}

# np_apt_ready: the private lists, derived and updated once (NP_APT_REFRESH=1: again).
np_apt_ready() {
    if [ "${NP_APT_REFRESH:-0}" = 1 ] || [ ! -f "$NP_APT_DIR/lists.stamp" ]; then
        np_apt_derive
        np_apt apt-get update || np_die "apt-get update of the private source list failed"
        date -u +%s > "$NP_APT_DIR/lists.stamp"
    fi
}

# np_apt_uris PACKAGE=VERSION -> "URI NAME SIZE SHA256" per file of that source package
np_apt_uris() {
    np_apt apt-get source --print-uris "$1" 2>/dev/null |
        awk "\$1 ~ /^'/ { gsub(/'/, \"\", \$1); sub(/^SHA256:/, \"\", \$4); print \$1, \$2, \$3, \$4 }"
}

# np_apt_download_file URI DEST SHA256: fetched by apt (it checks the hash).
np_apt_download_file() {
    local out rc=0
    out=$(np_apt /usr/lib/apt/apt-helper download-file "$1" "$2" "SHA256:$3" 2>&1) || rc=$?
    # apt-helper warns that it does not drop root when the target dir is not _apt's
    printf '%s\n' "$out" | grep -v -e '^W: Download is performed unsandboxed' -e '^$' >&2 || true
    return $rc
}
