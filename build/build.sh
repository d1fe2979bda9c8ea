#!/usr/bin/env bash
# The one build pipeline: build tools, fetch + verify every source once,
# dependency builds (cached), the Lua runtime files, nginx, the bundle (and for
# the released variant its tarball).  NP_VARIANT / NP_BUILD_DIR / NP_BUNDLE_OUT
# choose the variant and directories (build/common.sh), NP_ARCH the target
# (build/arch.sh: x86_64, or aarch64 cross-built).
. "$(dirname "$0")/common.sh"
bash "$NP_ROOT/build/install-deps.sh" build
"$NP_ROOT/build/fetch.sh"
# deps.sh builds for NP_ARCH: natively, or cross-built for aarch64.
"$NP_ROOT/build/deps.sh"
mkdir -p "$NP_B"
"$NP_ROOT/build/lualib.sh" "$NP_LUALIB_STAGE"
"$NP_ROOT/build/nginx.sh"
"$NP_ROOT/build/bundle.sh"
