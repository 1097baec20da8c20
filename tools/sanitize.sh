#!/usr/bin/env bash
# Builds simdnn with AddressSanitizer and UndefinedBehaviorSanitizer and runs the test suite on it
# (every ISA this CPU has, through the suite's own ISA parametrization), less the large-tensor
# tests unless pytest arguments are given: they took 30-162 s each under ASan on the CI VM
# (2026-12-02), mostly the first touch of 8-11 GB, and check the kernels' 64-bit indexing on
# every ISA in the README's `pytest` already. Any report fails the run: the build aborts on the first one
# (-fno-sanitize-recover=all), and the reports go to files under build/sanitize/reports/ (one per
# process), printed and counted at the end, in case one came from a child process whose exit
# status a test does not look at or was swallowed with a test's captured output.
#
# Usage: bash tools/sanitize.sh [pytest arguments...]   (from anywhere; PYTHON=python3.X picks the
# interpreter; SANITIZE=address,undefined is the default list; SANITIZE_SHARDS=N the number of test
# processes, one per core by default; no arguments means -m "not large")
# Scratch in build/sanitize/ (venv, CMake build directory, log), rebuilt from scratch each run.
# 9-18 minutes on 2 cores (an Intel Xeon VM, 2026-12-01 and -02): about 5 for the instrumented
# build (-O2 -g1, CMakeLists.txt says why) and its venv, 4-13 for the tests (the 13 with the
# large-tensor tests, 344 s of them in four tests). On the slower VM of 2026-12-03, 15 minutes: 7.5
# for the build, 7.7 for the tests in one process (since then split between one per core).
#
# Python itself is not instrumented, so the ASan runtime is preloaded (it must be the first library
# in the process). Leak detection is off here because the interpreter keeps much of its memory
# until exit by design; leaks from simdnn are checked under valgrind (tools/memcheck.sh).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=tools/shards.sh
source tools/shards.sh
ROOT=$PWD
WORK=$ROOT/build/sanitize
PYTHON=$("${PYTHON:-python3}" -c "import sys; print(sys.executable)")
SANITIZE=${SANITIZE:-address,undefined}
SHARDS=${SANITIZE_SHARDS:-$(nproc 2>/dev/null || echo 1)}
T0=$(date +%s)
step() { printf '\n=== [%4d s] %s\n' "$(($(date +%s) - T0))" "$*"; }

command -v g++ >/dev/null || {
  echo "sanitize.sh: needs g++ (its libasan and libubsan)" >&2
  exit 1
}

step "building simdnn with -fsanitize=$SANITIZE"
rm -rf "$WORK"
mkdir -p "$WORK"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --disable-pip-version-check \
  -C "cmake.define.SIMDNN_SANITIZE=$SANITIZE" -C "build-dir=$WORK/build" "$ROOT[test]"

# The module cannot be imported yet to ask where it is (the ASan runtime must be preloaded).
so=$(find "$WORK/venv" -path '*/simdnn/_core*.so' | head -1)
has() { [[ ",$SANITIZE," == *",$1,"* ]]; }
libs=$(ldd "$so")  # captured first: `ldd | grep -q` fails under pipefail when grep exits early
linked() {
  grep -q "$1" <<<"$libs" || {
    echo "sanitize.sh: $so does not link $1; the build is not instrumented" >&2
    exit 1
  }
}
preload=()
if has address; then
  linked libasan
  # libstdc++ too: Python does not link it, and ASan's __cxa_throw interceptor must find it when
  # the runtime starts (else the first C++ exception of any extension, matplotlib's included,
  # aborts with "CHECK failed: real___cxa_throw").
  preload+=("$(g++ -print-file-name=libasan.so)" "$(g++ -print-file-name=libstdc++.so)")
fi
if has undefined; then linked libubsan; fi
echo "--- $(basename "$so") links: $(grep -oE 'lib(a|ub|t)san[^ ]*' <<<"$libs" | tr '\n' ' ')"

step "pytest under the sanitizers"
export LD_PRELOAD="${preload[*]:-}"
# Reports go to files, not to stderr: pytest captures a test's stderr and shows it only
# for a failure it sees, so a report from a child process, or one a test's own output swallowed,
# would otherwise leave only "exit status 1" in the log. Each process writes <name>.<pid>.
REPORTS=$WORK/reports
mkdir -p "$REPORTS"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:check_initialization_order=1:detect_stack_use_after_return=1:log_path=$REPORTS/asan${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$REPORTS/ubsan${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
[ "$#" -gt 0 ] || set -- -m "not large"
# From the tests' directory's parent, as README's `pytest`, but with this venv's interpreter.
# The suite is split between SHARDS processes (pytest --shard, tests/conftest.py), one per core by
# default: most of its tests are small, so one process keeps about one core busy.
status=0
run_shards "$SHARDS" "$WORK/pytest" \
  "$WORK/venv/bin/python" -m pytest -q -p no:cacheprovider --durations=5 "$@" || status=$?
pattern='ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer'
shopt -s nullglob
files=("$REPORTS"/*)
for f in "${files[@]}"; do
  printf '\n--- %s\n' "$f"
  cat "$f"
done
reports=$(cat "$WORK"/pytest.*.log "${files[@]}" | grep -cE "$pattern" || true)
step "done: pytest exit status $status, $reports sanitizer reports in the log and ${#files[@]}" \
  "report files (logs: $WORK/pytest.*.log, files: $REPORTS)"
if [ "$status" != 0 ] || [ "$reports" != 0 ] || [ "${#files[@]}" != 0 ]; then
  exit 1
fi
