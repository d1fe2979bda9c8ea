#!/usr/bin/env bash
# `make release`: build everything and put the release artifacts into dist/.
# Per architecture ARCH (x86_64, aarch64; build/arch.sh):
#   dist/nginx-portable-VERSION-linux-ARCH.tar.gz       reproducible tarball (+ .sha256)
#   dist/nginx-portable-VERSION-linux-ARCH.oci.tar      that architecture's OCI image (one tar)
#   dist/nginx-portable-VERSION-linux-ARCH.cdx.json     CycloneDX SBOM, from build/deps.lock
# and for all of them:
#   dist/nginx-portable-VERSION.oci.tar                 one OCI image index holding every platform
#   dist/SHA256SUMS                                     checksums of all the files above
# (dist/nginx-portable/ and dist/nginx-portable-aarch64/ are the bundles as built.)
#
# Every byte is a function of the lock file and the sources: the same inputs give
# the same checksums in any directory, at any time (tests/release/test_reproducible.py).
#   NP_CA_BUNDLE       CA bundle to ship in the images (default: the build host's)
#   NP_RELEASE_ARCHES  architectures to release (default: "x86_64 aarch64")
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/build/common.sh"

arches=${NP_RELEASE_ARCHES:-x86_64 aarch64}
for arch in $arches; do           # nginx, the bundle, the tarball and its .sha256
    NP_ARCH=$arch bash "$root/build/build.sh"
done

version=$(cat "$root/VERSION")
dist=$root/dist
ca=${NP_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[ -s "$ca" ] || np_die "no CA bundle at $ca (apt-get install ca-certificates, or set NP_CA_BUNDLE)"

# The images are made from the tarballs' content, not from dist/nginx-portable*,
# which someone may have run (logs) or edited since.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
all_bundles=() sums=()
multi=nginx-portable-$version.oci.tar
for arch in $arches; do
    base=nginx-portable-$version-linux-$arch
    mkdir -p "$work/$arch" && tar -xzf "$dist/$base.tar.gz" -C "$work/$arch"
    np_log "OCI image ($arch)"
    python3 "$root/release/oci-image.py" --bundle "$arch=$work/$arch/nginx-portable" --ca "$ca" \
        --out "$dist/$base.oci.tar" >/dev/null
    all_bundles+=(--bundle "$arch=$work/$arch/nginx-portable")
    sums+=("$base.tar.gz" "$base.oci.tar" "$base.cdx.json")
done
np_log "OCI image index ($arches)"
python3 "$root/release/oci-image.py" "${all_bundles[@]}" --ca "$ca" --out "$dist/$multi" >/dev/null
for arch in $arches; do
    base=nginx-portable-$version-linux-$arch
    np_log "SBOM ($arch)"
    python3 "$root/release/sbom.py" --root "$root" --arch "$arch" --tarball "$dist/$base.tar.gz" \
        --bundle "$work/$arch/nginx-portable" --image "$dist/$base.oci.tar" --image "$dist/$multi" \
        --ca "$ca" --require-patches -o "$dist/$base.cdx.json" >/dev/null
done

cd "$dist"
sums+=("$multi")
sha256sum "${sums[@]}" > SHA256SUMS
np_log "release $version in $dist:"
for f in "${sums[@]}" SHA256SUMS; do
    printf '  %10s  %s\n' "$(stat -c %s "$f")" "$f" >&2
done
for arch in $arches; do
    d=nginx-portable; [ "$arch" = x86_64 ] || d=nginx-portable-$arch
    printf '  %10s  %s\n' "$(stat -c %s "$d/sbin/nginx")" "$d/sbin/nginx" >&2
done
