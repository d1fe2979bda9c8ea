#!/usr/bin/env bash
# traffic-status benchmark (see bench.py): counting off vs on, and the
# Prometheus render time with 1000 hosts and 1000 upstream peers.
#   NP_BUNDLE=<bundle> bash bench/traffic-status/run.sh [--rounds N --duration S --strict]
set -euo pipefail
cd "$(dirname "$0")/../.."
export NP_BUNDLE=${NP_BUNDLE:-$PWD/dist/nginx-portable}
[ -x "$NP_BUNDLE/sbin/nginx" ] || { echo "no bundle at $NP_BUNDLE" >&2; exit 1; }
exec /usr/bin/python3 bench/traffic-status/bench.py "$@"
