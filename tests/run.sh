#!/usr/bin/env bash
# Run the test suite against the bundle (NP_BUNDLE, default dist/nginx-portable).
# Extra arguments go to pytest, e.g. tests/run.sh -k upstream -x
# NP_ARCH=aarch64 tests/run.sh tests/arm64: the aarch64 bundle
# (dist/nginx-portable-aarch64), every nginx run under qemu-aarch64-static.
set -euo pipefail
cd "$(dirname "$0")/.."
bash build/install-deps.sh
arch=${NP_ARCH:-x86_64}
if [ -z "${NP_BUNDLE:-}" ]; then
    bash build/build.sh          # incremental: seconds when nothing changed
    if [ "$arch" = x86_64 ]; then export NP_BUNDLE=$PWD/dist/nginx-portable
    else export NP_BUNDLE=$PWD/dist/nginx-portable-$arch; fi
fi
[ "$arch" = x86_64 ] || export NP_EXEC_WRAPPER=${NP_EXEC_WRAPPER-qemu-$arch-static}
[ -x "$NP_BUNDLE/sbin/nginx" ] || { echo "no bundle at $NP_BUNDLE" >&2; exit 1; }
rc=0
/usr/bin/python3 -m pytest -ra -p no:cacheprovider "${@:-tests}" || rc=$?
# pytest's 5 means no test was collected: that is a failure for us.
[ $rc -eq 5 ] && { echo "no tests were collected" >&2; exit 1; }
exit $rc
