"""Forecasts in a short-lived process of their own, so that numba is loaded there and not in
the long-running process that asks for them.

numba with LLVM adds over 100 MB to a process, and it stays resident for as long as that process
lives, although an agent forecasts only a few times a day (and once per ISP intraday). A worker
started per forecast round loads it, runs the compiled kernels from the on-disk cache (the
parent's NUMBA_CACHE_DIR is inherited: `forecaster.cache`), answers and exits, handing the
memory back. It also keeps a crashing kernel from taking its parent down: a killed or failing
worker is a `WorkerError` with one clear line, and the parent carries on with what it had.

Protocol: the parent writes one pickled ``(function, args)`` to the worker's stdin, where
`function` is a module-level function (pickled by its qualified name, imported by the worker);
the worker writes one pickled ``("ok", value)`` or ``("error", message, traceback)`` to its
stdout and exits 0. Both ends are the same installation: pickle carries no foreign data here.

Usage (by `run_in_worker`): python -m forecaster.worker
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, TypeVar, cast

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 600.0
"""A forecast round takes about a second on a gateway; ten minutes means it hangs."""


class WorkerError(RuntimeError):
    """The worker did not deliver a result; the message says why in one line."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail
        """The worker's traceback or the end of its stderr, for the debug log."""


def command() -> list[str]:
    """The worker's command line: this interpreter, this installation."""
    return [sys.executable, "-m", "forecaster.worker"]


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


def _last_line(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line]
    return lines[-1] if lines else "no output"


async def run_in_worker(
    function: Callable[..., T],
    args: Sequence[Any],
    *,
    argv: Sequence[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> T:
    """`function(*args)` in a new worker process; its return value, or WorkerError.

    A worker that outlives `timeout_s`, or whose caller is cancelled, is killed: no worker
    outlives the round that started it.
    """
    cmd = list(argv or command())
    try:
        payload = pickle.dumps((function, tuple(args)), protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise WorkerError(f"forecast job cannot be sent to a worker: {exc}") from exc
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise WorkerError(f"forecast worker could not start: {exc}") from exc
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(payload), timeout_s)
    except TimeoutError:
        await _kill(proc)
        raise WorkerError(
            f"forecast worker (pid {proc.pid}) took longer than {timeout_s:g} s: killed"
        ) from None
    except BaseException:
        await _kill(proc)
        raise
    code = proc.returncode
    assert code is not None
    if code != 0:
        raise WorkerError(
            f"forecast worker (pid {proc.pid}) {_describe_exit(code)} ({_last_line(stderr)})",
            stderr.decode("utf-8", "replace"),
        )
    try:
        outcome = pickle.loads(stdout)
    except Exception as exc:
        raise WorkerError(
            f"forecast worker (pid {proc.pid}) sent no readable result: {exc}",
            stderr.decode("utf-8", "replace"),
        ) from None
    if outcome[0] == "ok":
        return cast("T", outcome[1])
    raise WorkerError(f"forecast worker failed: {outcome[1]}", outcome[2])


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def serve(source: BinaryIO, sink: BinaryIO) -> int:
    """One job from `source`, its outcome to `sink`."""
    try:
        function, args = pickle.load(source)
    except Exception as exc:
        print(f"forecast worker: unreadable job: {exc}", file=sys.stderr)
        return 2
    try:
        outcome: tuple[Any, ...] = ("ok", function(*args))
    except Exception as exc:
        outcome = ("error", f"{type(exc).__name__}: {exc}", traceback.format_exc())
    try:
        data = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        data = pickle.dumps(("error", f"result cannot be sent back: {exc}", ""))
    sink.write(data)
    sink.flush()
    return 0


def main() -> int:
    # The result owns the real stdout; anything a library prints goes to stderr instead.
    sink = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    with sink:
        return serve(sys.stdin.buffer, sink)


if __name__ == "__main__":
    raise SystemExit(main())
