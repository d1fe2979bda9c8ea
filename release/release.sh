#!/usr/bin/env bash
# `make release`: build everything and put the release artifacts into dist/.
#
#   dist/nginx-portable/                                  the bundle (as built)
#   dist/nginx-portable-VERSION-linux-x86_64.tar.gz       reproducible tarball (+ .sha256)
#   dist/nginx-portable-VERSION-linux-x86_64.oci.tar      OCI image layout in one tar
#   dist/nginx-portable-VERSION-linux-x86_64.cdx.json     CycloneDX SBOM, from build/deps.lock
#   dist/SHA256SUMS                                       checksums of the three files above
#
# Every byte is a function of the lock file and the sources: the same inputs give
# the same checksums in any directory, at any time (tests/release/test_reproducible.py).
#   NP_CA_BUNDLE   CA bundle to ship in the image (default: the build host's)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/build/common.sh"

bash "$root/build/build.sh"          # nginx, the bundle, the tarball and its .sha256

version=$(cat "$root/VERSION")
dist=$root/dist
base=nginx-portable-$version-linux-x86_64
ca=${NP_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[ -s "$ca" ] || np_die "no CA bundle at $ca (apt-get install ca-certificates, or set NP_CA_BUNDLE)"

# The image is made from the tarball's content, not from dist/nginx-portable,
# which someone may have run (logs) or edited since.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$dist/$base.tar.gz" -C "$work"
np_log "OCI image"
python3 "$root/release/oci-image.py" --bundle "$work/nginx-portable" --ca "$ca" \
    --out "$dist/$base.oci.tar" >/dev/null
np_log "SBOM"
python3 "$root/release/sbom.py" --root "$root" --tarball "$dist/$base.tar.gz" \
    --bundle "$work/nginx-portable" --image "$dist/$base.oci.tar" --ca "$ca" \
    --require-patches -o "$dist/$base.cdx.json" >/dev/null

cd "$dist"
sha256sum "$base.tar.gz" "$base.oci.tar" "$base.cdx.json" > SHA256SUMS
np_log "release $version in $dist:"
for f in "$base.tar.gz" "$base.oci.tar" "$base.cdx.json" SHA256SUMS; do
    printf '  %10s  %s\n' "$(stat -c %s "$f")" "$f" >&2
done
printf '  %10s  %s\n' "$(stat -c %s nginx-portable/sbin/nginx)" "nginx-portable/sbin/nginx" >&2
