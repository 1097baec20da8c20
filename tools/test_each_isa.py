"""Run the test suite once per instruction set this machine has, each with SIMDNN_ISA forced.

Usage: python tools/test_each_isa.py [--shards N] [pytest arguments...]

The ISAs come from ``simdnn.cpu_info()["available"]`` of the simdnn that this Python imports (an
installed wheel, not the source tree: run it from a directory where ``python/`` is not
importable). Each run is a fresh process, so every path of the one binary is selected the way a
user selects it, at import. The tests that force every ISA themselves (the isa and each_isa
fixtures, the large-tensor tests among them) run in the first run only. Prints one summary line
per ISA and exits non-zero if any run failed. tools/build_wheels.sh and the cibuildwheel
test-command both use it.

``--shards N`` splits each ISA's run between N pytest processes at once (``--shard=I/N``,
tests/conftest.py: every N-th selected test), whose logs are printed one after another when all
have ended, and whose counts are added up in the summary line. The runs of one ISA still end
before the next ISA's start. build_wheels.sh gives it one shard per core: most tests are short
and single-threaded, so one process leaves a core idle much of the time.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack


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


# The counts of pytest's closing line ("12 passed, 1 skipped, 3 deselected in 4.56s").
_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed|warnings?)")


def run_sharded(command: list[str], env: dict[str, str], shards: int) -> tuple[int, str]:
    """Runs ``command`` (a pytest run) as ``shards`` processes at once, each with --shard=I/N
    appended when shards > 1, printing each one's output; returns (exit status, summary).

    The status is the first non-zero one, where pytest's 5 (this shard selected no test) counts
    only if every shard had it. With one shard the output is streamed as it comes."""
    start = time.monotonic()
    if shards == 1:
        proc = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        summary = ""
        for line in proc.stdout:
            sys.stdout.write(line)
            if re.search(r"\d+ (passed|failed|error)", line):
                summary = line.strip().strip("= ")
        code = proc.wait()
        sys.stdout.flush()
        return code, summary or f"pytest exited with {code}"
    with tempfile.TemporaryDirectory(prefix="test_each_isa-") as tmp, ExitStack() as stack:
        logs = [
            stack.enter_context(open(os.path.join(tmp, f"shard{i}.log"), "w+"))
            for i in range(shards)
        ]
        procs = [
            subprocess.Popen(
                [*command, f"--shard={i}/{shards}"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for i, log in enumerate(logs)
        ]
        codes = [proc.wait() for proc in procs]
        totals: dict[str, int] = {}
        for i, log in enumerate(logs):
            log.seek(0)
            text = log.read()
            print(f"--- shard {i}/{shards}: exit status {codes[i]}")
            sys.stdout.write(text)
            closing = [line for line in text.splitlines() if _COUNT.search(line)]
            for count, word in _COUNT.findall(closing[-1] if closing else ""):
                # Each shard deselects the others' tests: their sum says nothing.
                if word != "deselected":
                    word = {"error": "errors", "warning": "warnings"}.get(word, word)
                    totals[word] = totals.get(word, 0) + int(count)
    sys.stdout.flush()
    failing = [c for c in codes if c not in (0, 5)]
    code = failing[0] if failing else (5 if all(c == 5 for c in codes) else 0)
    counts = ", ".join(f"{n} {word}" for word, n in totals.items())
    summary = f"{counts or 'no counts'} in {time.monotonic() - start:.1f}s ({shards} shards)"
    return code, summary


def main(argv: list[str]) -> int:
    shards = 1
    rest: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--shards" or arg.startswith("--shards="):
            value = arg.partition("=")[2] if "=" in arg else next(it, "")
            if not value.isdigit() or int(value) < 1:
                print(f"test_each_isa.py: --shards expects a whole number >= 1, got {value!r}")
                return 4
            shards = int(value)
        else:
            rest.append(arg)
    argv = rest
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
        code, summary = run_sharded([sys.executable, "-m", "pytest", *args], env, shards)
        results.append((isa, code, summary))
    print("--- per-ISA results")
    for isa, code, summary in results:
        print(f"{isa}: {summary}{'' if code == 0 else f' (exit {code})'}")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
