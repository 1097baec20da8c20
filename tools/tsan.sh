#!/usr/bin/env bash
# Builds the kernels without Python under ThreadSanitizer and runs the two C++ programs that drive
# the thread pool: simdnn_pool_stress (back-to-back parallel calls of changing size from two
# caller threads, exceptions from tasks) and simdnn_smoke (the GEMM of every ISA on 1 and 2
# threads, checked element by element). Any race report fails the run (halt_on_error).
#
# Python is not in the picture: an uninstrumented interpreter under a preloaded TSan runtime gives
# reports that are not ours; the pool and the kernels are the code whose synchronisation is ours.
#
# Usage: bash tools/tsan.sh [calls per caller thread, default 20000]   (from anywhere)
# Scratch in build/tsan/, rebuilt each run. About 2 minutes on 2 cores.
set -euo pipefail

cd "$(dirname "$0")/.."
WORK=$PWD/build/tsan
CALLS=${1:-20000}
T0=$(date +%s)
step() { printf '\n=== [%4d s] %s\n' "$(($(date +%s) - T0))" "$*"; }

step "building the kernels with -fsanitize=thread (no Python)"
rm -rf "$WORK"
cmake -S . -B "$WORK" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSIMDNN_BUILD_PYTHON=OFF \
  -DSIMDNN_SANITIZE=thread >"$WORK.log" 2>&1 || {
  cat "$WORK.log"
  exit 1
}
cmake --build "$WORK" -j 2 >>"$WORK.log" 2>&1 || {
  tail -50 "$WORK.log"
  exit 1
}

export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1"
step "simdnn_pool_stress $CALLS"
"$WORK/simdnn_pool_stress" "$CALLS"
step "simdnn_smoke"
"$WORK/simdnn_smoke"
step "done: no ThreadSanitizer report"
