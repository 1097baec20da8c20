"""Run the test suite once per instruction set this machine has, each with SIMDNN_ISA forced.

Usage: python tools/test_each_isa.py [pytest arguments...]

The ISAs come from ``simdnn.cpu_info()["available"]`` of the simdnn that this Python imports (an
installed wheel, not the source tree: run it from a directory where ``python/`` is not
importable). Each run is a fresh process, so every path of the one binary is selected the way a
user selects it, at import. The tests that force every ISA themselves (the isa and each_isa
fixtures, the large-tensor tests among them) run in the first run only. Prints one summary line
per ISA and exits non-zero if any run failed. tools/build_wheels.sh and the cibuildwheel
test-command both use it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys


def loaded_openmp_runtime() -> str:
    """The OpenMP runtime file mapped into this process (Linux only; '' elsewhere)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if re.search(r"lib(g|i)?omp[^/]*\.so", os.path.basename(path)):
                    return path
    except OSError:
        pass
    return ""


def main(argv: list[str]) -> int:
    import simdnn

    info = simdnn.cpu_info()
    isas = info["available"]
    print(f"simdnn {simdnn.__version__} from {os.path.dirname(simdnn.__file__)}")
    print(f"compiled ISAs: {', '.join(info['compiled'])}; available here: {', '.join(isas)}")
    omp = loaded_openmp_runtime()
    if omp:
        print(f"OpenMP runtime: {omp}")
    results: list[tuple[str, int, str]] = []
    # Widest first: the tests on the isa fixture set each ISA themselves, so only the first run
    # needs them; the later runs deselect them (--no-isa-matrix, tests/conftest.py) and run the
    # rest, which take the forced ISA from SIMDNN_ISA. The whole suite runs fastest on the widest
    # ISA (CI, 2 cores: 170 s with scalar as the default, 119 s with AVX-512). The large-tensor
    # tests loop over every ISA themselves (the each_isa fixture), so they too run in the first
    # run only. So do the whole-program files (README blocks, demo, deep lab, MPI jobs, bench):
    # they run the kernels that the op tests check on every ISA, and took 157 of the 205 s of
    # the scalar run's tests on a 2-core Xeon VM (--no-whole-programs, tests/conftest.py).
    for i, isa in enumerate(reversed(isas)):
        args = argv if i == 0 else ["--no-isa-matrix", "--no-whole-programs", *argv]
        print(f"--- SIMDNN_ISA={isa} pytest {' '.join(args)}", flush=True)
        env = {**os.environ, "SIMDNN_ISA": isa}
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        summary = ""
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            if re.search(r"\d+ (passed|failed|error)", line):
                summary = line.strip().strip("= ")
        code = proc.wait()
        sys.stdout.flush()
        results.append((isa, code, summary or f"pytest exited with {code}"))
    print("--- per-ISA results")
    for isa, code, summary in results:
        print(f"{isa}: {summary}{'' if code == 0 else f' (exit {code})'}")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
