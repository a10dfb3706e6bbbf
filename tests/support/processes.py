"""Run `flexbridge` as a real child process and watch its log lines."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path


class AgentProcess:
    """A `python -m agent ...` child with its stderr collected line by line."""

    def __init__(
        self,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        *,
        sigint_ignored: bool = False,
    ) -> None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        command = [sys.executable, "-m", "agent", *args]
        if sigint_ignored:
            # As a shell starts a background job: SIGINT ignored, inherited across exec.
            command = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command]
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
            cwd=cwd,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        for stream in (self.proc.stdout, self.proc.stderr):
            threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self._queue.empty():
                    break
                continue
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(
            f"{text!r} not seen in {timeout_s} s; exit={self.proc.poll()}; output:\n"
            + "\n".join(self.lines)
        )

    def drain(self) -> list[str]:
        """Everything printed so far (for failure messages)."""
        while not self._queue.empty():
            self.lines.append(self._queue.get_nowait())
        return self.lines

    def finish(self, timeout_s: float = 20.0) -> int:
        code = self.proc.wait(timeout=timeout_s)
        time.sleep(0.05)
        while not self._queue.empty():
            self.lines.append(self._queue.get_nowait())
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
