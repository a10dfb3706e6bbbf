"""Timing hooks: the modules that do the work report how long it took, the metrics collector
(agent.interfaces.metrics) turns that into histograms. A hook defaults to `discard`, so the
working modules depend on neither Prometheus nor the operator interfaces."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Observe = Callable[[str, float], None]
"""(what, seconds): `what` is the label, e.g. "round", "FlexRequest", "transaction"."""


def discard(_what: str, _seconds: float) -> None:
    return None


@contextmanager
def timed(observe: Observe, what: str) -> Iterator[None]:
    """Observe how long the block took, also when it raised."""
    started = time.perf_counter()
    try:
        yield
    finally:
        observe(what, time.perf_counter() - started)
