"""Which files the process opens, seen through a `sys.addaudithook` hook on "open" events.

An audit hook sees every open (builtins, io, os.open, pathlib, C extensions that go through
the interpreter), which monkeypatching `open` would not. Hooks cannot be removed, so one hook is
installed on first use and reports to whichever recorders are active.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_recorders: list[list[str]] = []
_installed = False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event != "open" or not _recorders or not args:
        return
    path = args[0]
    if isinstance(path, str | bytes | os.PathLike):
        name = os.fsdecode(path)
        for recorder in _recorders:
            recorder.append(name)


@contextmanager
def recording_opens() -> Iterator[list[str]]:
    """The paths opened (by any thread) while the block runs."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    opened: list[str] = []
    _recorders.append(opened)
    try:
        yield opened
    finally:
        _recorders.remove(opened)


def outside(opened: list[str], folders: list[Path]) -> list[str]:
    """Opened paths that are not inside one of `folders` (Python's own imports aside)."""
    inside = [folder.resolve() for folder in folders]
    found = []
    for name in opened:
        if name.endswith((".py", ".pyc", ".so")):  # a lazy import, not a data file
            continue
        path = Path(name).resolve()
        if not any(path.is_relative_to(folder) for folder in inside):
            found.append(name)
    return found
