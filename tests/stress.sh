#!/usr/bin/env bash
# Run the test suite (or the given pytest arguments) while the CPU is
# deliberately contended: one niced busy loop per core for the whole run, so
# timing assumptions that only hold on a quiet machine show up here first.
#
#   bash tests/stress.sh [pytest args]        release bundle (tests/run.sh)
#   NP_STRESS_TIER=asan bash tests/stress.sh  the ASan tier (make test-asan)
#   NP_STRESS_NICE=N   niceness of the loops (default 10: they take what the
#                      tests leave, and still steal time slices from them)
set -euo pipefail
cd "$(dirname "$0")/.."
loops=()
stop_loops() { [ ${#loops[@]} -eq 0 ] || kill "${loops[@]}" 2>/dev/null || true; }
trap stop_loops EXIT
for _ in $(seq "$(nproc)"); do
    nice -n "${NP_STRESS_NICE:-10}" bash -c 'while :; do :; done' &
    loops+=($!)
done
echo "[stress] ${#loops[@]} busy loops (nice ${NP_STRESS_NICE:-10}) running: ${loops[*]}" >&2
start=$SECONDS
rc=0
if [ "${NP_STRESS_TIER:-release}" = asan ]; then make test-asan || rc=$?
else bash tests/run.sh "$@" || rc=$?; fi
echo "[stress] suite under contention took $((SECONDS - start)) s (rc $rc)" >&2
exit $rc
