"""Command line: ``python -m simdnn <command>``.

Commands:
    demo          train an MLP and a ConvNet on the 8x8 digits; accuracy and native speed-up
                  [--plots DIR] [--quiet] [--distributed: on every rank of an MPI job,
                  mpiexec -n 4 python -m simdnn demo --distributed]
    vanishing     per-layer gradient norms of deep sigmoid/tanh/ReLU MLPs [--out FILE.png]
    deep          a 20-layer MLP trained four ways: sigmoid, ReLU + He, + BatchNorm, + residual
                  [--out FILE.png] [--quick] [--seed N]
    equivariance  shifted inputs give shifted feature maps; pooling hides small shifts
    bench         time every kernel against its pure-NumPy twin (``python -m simdnn bench --help``)
    info          print the CPU, the instruction set in use and the blocking
    distributed-check
                  ranks, hosts, threads per rank and the measured allreduce latency and
                  bandwidth of an MPI job (mpiexec -n 2 python -m simdnn distributed-check)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "bench":
        from . import bench

        return bench.main(rest)
    if command == "demo":
        import argparse

        from . import demos

        parser = argparse.ArgumentParser(prog="python -m simdnn demo")
        parser.add_argument("--quiet", action="store_true", help="no progress bars")
        parser.add_argument("--plots", default=None, metavar="DIR", help="save filter pictures")
        parser.add_argument(
            "--distributed",
            action="store_true",
            help="train on every rank of the MPI job (run under mpiexec)",
        )
        opts = parser.parse_args(rest)
        demos.demo(progress=not opts.quiet, plots=opts.plots, distributed=opts.distributed)
        return 0
    if command == "distributed-check":
        import argparse

        from . import distributed

        parser = argparse.ArgumentParser(prog="python -m simdnn distributed-check")
        parser.add_argument("--repeats", type=int, default=50, help="allreduces timed per size")
        opts = parser.parse_args(rest)
        if opts.repeats < 1:
            parser.error(f"--repeats must be >= 1, got {opts.repeats}")
        result = distributed.check(repeats=opts.repeats)
        if distributed.is_main():
            print(distributed.format_check(result))
        return 0
    if command == "vanishing":
        import argparse

        from . import demos

        parser = argparse.ArgumentParser(prog="python -m simdnn vanishing")
        parser.add_argument("--out", default=None, help="write the plot to this PNG file")
        opts = parser.parse_args(rest)
        demos.vanishing(out=opts.out)
        return 0
    if command == "deep":
        import argparse

        from . import deep

        parser = argparse.ArgumentParser(prog="python -m simdnn deep")
        parser.add_argument("--out", default=None, help="write the plot to this PNG file")
        parser.add_argument(
            "--quick",
            action="store_true",
            help=f"{deep.QUICK_EPOCHS} epochs instead of {deep.EPOCHS}",
        )
        parser.add_argument("--seed", type=int, default=0, help="weights and shuffling seed")
        opts = parser.parse_args(rest)
        deep.deep_lab(
            out=opts.out, epochs=deep.QUICK_EPOCHS if opts.quick else deep.EPOCHS, seed=opts.seed
        )
        return 0
    if command == "equivariance":
        from . import demos

        demos.equivariance()
        return 0
    if command == "info":
        import pprint

        from . import cpu_info

        pprint.pprint(cpu_info())
        return 0
    print(f"unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
