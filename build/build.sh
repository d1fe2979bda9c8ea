#!/usr/bin/env bash
# Build everything into dist/: fetch + verify sources, dependency builds
# (cached), nginx, the bundle and its tarball.  Installs build tools first.
set -euo pipefail
here=$(dirname "$0")
bash "$here/install-deps.sh" build
bash "$here/nginx.sh"
bash "$here/bundle.sh"
