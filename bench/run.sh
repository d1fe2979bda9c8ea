#!/usr/bin/env bash
# Run every benchmark (bench/*/bench*.py) against the bundle; one JSON line each.
set -euo pipefail
cd "$(dirname "$0")/.."
bash build/install-deps.sh
export NP_BUNDLE=${NP_BUNDLE:-$PWD/dist/nginx-portable}
for b in bench/*/bench*.py; do
    echo "== $b" >&2
    /usr/bin/python3 "$b"
done
