"""Command line: ``python -m simdnn <command>``.

Commands:
    bench   time every kernel against its pure-NumPy twin (``python -m simdnn bench --help``)
    info    print the CPU, the instruction set in use and the blocking
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
    if command == "info":
        import pprint

        from . import cpu_info

        pprint.pprint(cpu_info())
        return 0
    print(f"unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
