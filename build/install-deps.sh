#!/usr/bin/env bash
# Install the Debian packages the build and the tests need.  Runs apt only
# when something is missing, so a warm machine pays nothing.
#
#   install-deps.sh          build + test tools (both architectures)
#   install-deps.sh build    build tools only (+ the cross toolchain when NP_ARCH=aarch64)
set -euo pipefail

build_pkgs=(build-essential dpkg-dev autoconf automake libtool patch perl python3 file binutils ca-certificates git curl)
test_pkgs=(python3-pytest openssl curl wrk nghttp2-client prometheus chromium nginx-light
           libclang-rt-14-dev iproute2 procps psmisc umoci skopeo logrotate python3-yaml valgrind
           systemd strace python3-jsonschema ngtcp2-client python3-dnslib)
# The aarch64 build (NP_ARCH=aarch64, build/arch.sh): Debian's cross toolchain,
# and qemu to run configure's test programs and the tests (no binfmt needed).
cross_pkgs=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static)

want=("${build_pkgs[@]}")
[ "${1:-all}" = build ] || want+=("${test_pkgs[@]}" "${cross_pkgs[@]}")
[ "${1:-all}" != build ] || [ "${NP_ARCH:-x86_64}" = x86_64 ] || want+=("${cross_pkgs[@]}")

missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
echo "[deps] installing: ${missing[*]}" >&2
$sudo apt-get update -qq
# nginx-light is the benchmark baseline only: never let it start a service.
DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
# Debian's nginx package starts a daemon on :80 when a service manager exists;
# stop it so it does not collide with tests.
if command -v systemctl >/dev/null && systemctl is-active -q nginx 2>/dev/null; then
    $sudo systemctl disable --now nginx >/dev/null 2>&1 || true
fi
pkill -f '^nginx: master process /usr/sbin/nginx' 2>/dev/null || true
