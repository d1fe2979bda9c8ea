#!/usr/bin/env bash
# Build the bundle and start it on its default config (daemonised).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/build/build.sh"
prefix=$root/dist/nginx-portable
if [ -f "$prefix/logs/nginx.pid" ] && kill -0 "$(cat "$prefix/logs/nginx.pid")" 2>/dev/null; then
    "$prefix/sbin/nginx" -p "$prefix" -s reload
    echo "reloaded the running nginx-portable"
else
    "$prefix/sbin/nginx" -p "$prefix"
    echo "nginx-portable started from $prefix (stop: $prefix/sbin/nginx -p $prefix -s quit)"
fi
