"""The forecast worker process: results come back, failures are one clear WorkerError."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from forecaster.worker import WorkerError, run_in_worker


def numba_is_loaded_here(scale: float) -> tuple[bool, np.ndarray]:
    """Run in the worker: it may load numba, it is its own process."""
    import numba  # noqa: F401

    return "numba" in sys.modules, np.arange(3.0) * scale


def fails(message: str) -> None:
    raise ValueError(message)


def prints_to_stdout() -> str:
    print("a library that prints")
    return "result"


async def test_the_result_comes_back_from_a_process_of_its_own() -> None:
    loaded, values = await run_in_worker(numba_is_loaded_here, (2.0,))
    assert loaded
    np.testing.assert_array_equal(values, [0.0, 2.0, 4.0])


async def test_an_exception_in_the_job_is_one_line_with_the_traceback_kept() -> None:
    with pytest.raises(WorkerError, match=r"^forecast worker failed: ValueError: kernel") as info:
        await run_in_worker(fails, ("kernel said no",))
    assert "Traceback" in info.value.detail
    assert "\n" not in str(info.value)


async def test_printing_in_the_job_does_not_corrupt_the_result() -> None:
    assert await run_in_worker(prints_to_stdout, ()) == "result"


async def test_a_killed_worker_says_by_which_signal() -> None:
    argv = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    with pytest.raises(WorkerError, match=r"forecast worker \(pid \d+\) was killed by SIGKILL"):
        await run_in_worker(fails, ("unused",), argv=argv)


async def test_a_worker_that_exits_says_its_status_and_last_words() -> None:
    argv = [sys.executable, "-c", "import sys; sys.exit('LLVM ERROR: out of memory')"]
    with pytest.raises(WorkerError, match=r"exited with status 1 \(LLVM ERROR: out of memory\)"):
        await run_in_worker(fails, ("unused",), argv=argv)


async def test_a_hung_worker_is_killed_after_the_timeout() -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(WorkerError, match=r"took longer than 0.5 s: killed"):
        await run_in_worker(fails, ("unused",), argv=argv, timeout_s=0.5)


async def test_a_job_that_cannot_be_sent_is_refused_before_a_process_starts() -> None:
    with pytest.raises(WorkerError, match="cannot be sent"):
        await run_in_worker(lambda: None, ())
