#!/usr/bin/env bash
# Runs a fast, representative subset of the test suite under valgrind memcheck and fails on any
# error or leak that involves simdnn: an invalid read or write, a use of uninitialised memory (with
# its origin tracked, so an output element that a kernel never wrote is caught where Python later
# reads it), an invalid free, or memory allocated by simdnn and definitely or indirectly lost.
#
# Usage: bash tools/memcheck.sh [pytest arguments...]   (from anywhere; PYTHON=python3.X picks the
# interpreter, MEMCHECK_SHARDS=N the number of valgrind processes, one per core by default). Without
# arguments it runs the subset below. Scratch in build/memcheck/ (venv, one XML report per process,
# one log per shard). With SIMDNN_WHEEL=path/to/simdnn-*.whl it tests that wheel,
# installed binary-only, instead of building (CI passes the manylinux wheel of tools/build_wheels.sh:
# the artefact users get, and a compile of 150-210 s saved on the CI VM). That wheel is stripped,
# so a report names simdnn's frames by library only; run the script without SIMDNN_WHEEL for a
# RelWithDebInfo build whose reports carry function, file and line.
# About 7 minutes on 2 cores: 2 to build, 5 for the ~560 tests (13 minutes on a slower VM in CI of
# 2026-12-02, with SIMDNN_WHEEL: 30 s to install, 10 for the 601 tests, 2 for valgrind's exit and
# the reports; 12 minutes in CI of 2026-12-03, of which 10 for the tests in one process, and 8
# minutes with them in two, --shard, shards of 244 and 357 tests, 5.3 minutes each by pytest's
# clock). Valgrind runs Python and the kernels 20-50x slower: the whole suite would take
# hours, and adding the random-shape reference comparisons of tests/ops/test_conv2d.py,
# test_gemm.py and test_pool2d.py, ~430 more tests, 19 minutes (they ran clean).
#
# The subset: every micro-kernel on every tile shape, the regression tests (marker regression), the
# non-finite tests (marker nonfinite: every op on every path: packed and small GEMMs, implicit-GEMM,
# depthwise, flipped and col2im backward-data, partial-sum backward-weights, groups, dilation,
# pooling with uint8 and int32 indices), the thread tests, the runtime tests and the elementwise
# tests (tests/ops/test_relu.py and test_optim_updates.py but their hypothesis properties: 537
# tests). The regression and non-finite tests live with their op in tests/ops/, so they are
# chosen by marker; -k matches module names and marker names. The large-tensor tests (tens of
# GiB under valgrind) and the rest are left to tools/sanitize.sh, which runs the whole suite.
# test_best_isa_is_the_default is left out: it compares this process's
# best ISA (valgrind's CPU: AVX2) with a child's, which runs outside valgrind (AVX-512). So is
# test_flush_denormal_flushes_inputs_and_results_on_every_thread: valgrind does not emulate the
# MXCSR's flush-to-zero and denormals-are-zero modes, so under it the kernels return the
# denormals that the test expects flushed (the sanitize run covers it).
#
# valgrind emulates a CPU without AVX-512, so this run covers the scalar and AVX2 kernels and
# shows that the module imports and runs on such a CPU; AVX-512 code is covered by sanitize.sh.
# Python's own allocator is bypassed (PYTHONMALLOC=malloc) so that valgrind sees every block;
# Python's and NumPy's own reports (interpreter caches, possibly-lost arenas) are not simdnn's
# and are not counted: a report counts when simdnn's extension module is in any of its stacks
# (where it happened, where the memory was allocated or freed, where an uninitialised value came
# from).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=tools/shards.sh
source tools/shards.sh
ROOT=$PWD
WORK=$ROOT/build/memcheck
PYTHON=$("${PYTHON:-python3}" -c "import sys; print(sys.executable)")
# valgrind runs a process's threads one at a time, on one core: the subset is split between
# SHARDS processes (pytest --shard, tests/conftest.py), one per core by default.
SHARDS=${MEMCHECK_SHARDS:-$(nproc 2>/dev/null || echo 1)}
T0=$(date +%s)
step() { printf '\n=== [%4d s] %s\n' "$(($(date +%s) - T0))" "$*"; }

command -v valgrind >/dev/null || {
  echo "memcheck.sh: needs valgrind (e.g. apt-get install valgrind)" >&2
  exit 1
}

if [ "$#" = 0 ]; then
  modules="test_ukernels.py or test_threads.py or test_runtime.py or test_relu.py"
  modules+=" or test_optim_updates.py"
  # The thread-race tests run on the scalar kernels only, and the one with many Python threads
  # not at all: valgrind runs one thread at a time, so their racing threads mostly wait for their
  # turn. On AVX2 the two took 290 s of a 526 s run (125 s for one of them); on the scalar kernels
  # the many-threads one still took 20-22 s a case, 83 s of the two shards' 625 s in CI of
  # 2026-12-05 (AMD EPYC Zen 3). Their races are tools/tsan.sh's, and the sanitize run (ASan,
  # real threads) runs them whole.
  racing="thread_count_changed_between_and_during_calls"
  set -- tests/test_ukernels.py tests/test_threads.py tests/test_runtime.py tests/ops \
    tests/test_nn.py -m "not large and not property" \
    -k "($modules or regression or nonfinite) and not best_isa_is_the_default \
      and not flush_denormal_flushes_inputs_and_results_on_every_thread \
      and not many_python_threads_match_serial_calls and not (($racing) and avx2)"
fi

rm -rf "$WORK"
mkdir -p "$WORK/xml"
"$PYTHON" -m venv "$WORK/venv"
if [ -n "${SIMDNN_WHEEL:-}" ]; then
  step "installing $SIMDNN_WHEEL (binary only, no build)"
  "$WORK/venv/bin/python" -m pip install -q --disable-pip-version-check --only-binary=:all: \
    "$(realpath "$SIMDNN_WHEEL")[test]"
else
  step "building simdnn (release build, with debug info for readable stacks)"
  "$WORK/venv/bin/python" -m pip install -q --disable-pip-version-check \
    -C "cmake.build-type=RelWithDebInfo" -C "build-dir=$WORK/build" "$ROOT[test]"
fi
step "pytest under valgrind memcheck, $SHARDS processes (--shard): $*"
export PYTHONMALLOC=malloc HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
status=0
run_shards "$SHARDS" "$WORK/pytest" \
  valgrind --tool=memcheck --error-limit=no --track-origins=yes --num-callers=40 \
  --leak-check=full --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect \
  --xml=yes --xml-file="$WORK/xml/vg.%p.xml" \
  "$WORK/venv/bin/python" -m pytest -q -p no:cacheprovider --durations=5 "$@" || status=$?

step "reading the reports"
set +e
"$WORK/venv/bin/python" - "$WORK/xml" <<'EOF'
import collections
import pathlib
import re
import sys
import xml.etree.ElementTree as ET

# A child process that execs another program (the tests that start a fresh interpreter) leaves
# its report unfinished (valgrind follows no exec here): its <error> elements are read one by
# one. A forked child may append after the end of its parent's report: only the first document
# counts.
ours = collections.Counter()
others = collections.Counter()
shown = 0
for path in sorted(pathlib.Path(sys.argv[1]).glob("vg.*.xml")):
    text = path.read_text(errors="replace")
    end = text.find("</valgrindoutput>")
    text = text if end < 0 else text[:end]
    for chunk in re.findall(r"<error>.*?</error>", text, re.S):
        err = ET.fromstring(chunk)
        kind = err.findtext("kind")
        objs = [f.findtext("obj") or "" for f in err.iter("frame")]
        if any("/simdnn/" in o for o in objs):
            ours[kind] += 1
            if shown < 5:
                shown += 1
                print(f"--- {kind}: {err.findtext('what') or err.findtext('xwhat/text')}")
                for f in err.iter("frame"):
                    where = f.findtext("file")
                    where = f"{where}:{f.findtext('line')}" if where else f.findtext("obj")
                    print(f"      {f.findtext('fn')}  {where}")
        else:
            others[kind] += 1
print(f"memcheck: reports involving simdnn: {sum(ours.values())} {dict(ours)}")
print(f"memcheck: other reports (Python, NumPy, libraries; not counted): {dict(others)}")
sys.exit(1 if ours else 0)
EOF
reports=$?
set -e
step "done: pytest exit status $status (logs: $WORK/pytest.*.log)"
if [ "$status" != 0 ] || [ "$reports" != 0 ]; then
  exit 1
fi
