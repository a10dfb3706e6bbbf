"""``python -m bench <name> [args...]`` runs bench/<name>.py; ``python -m bench list`` lists."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

import bench

_NOT_BENCHMARKS = {"report", "__main__"}


def available() -> list[str]:
    here = Path(bench.__file__).parent
    return sorted(
        m.name
        for m in pkgutil.iter_modules([str(here)])
        if m.name not in _NOT_BENCHMARKS and not m.name.startswith("_")
    )


def main(argv: list[str]) -> int:
    names = available()
    if not argv or argv[0] in ("-h", "--help", "list"):
        print("usage: python -m bench <name> [args...]")
        print("benchmarks: " + (", ".join(names) or "(none yet)"))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in names:
        print(f"unknown benchmark {name!r}; available: {', '.join(names) or '(none)'}")
        return 2
    module = importlib.import_module(f"bench.{name}")
    module.main(rest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
