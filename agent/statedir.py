"""The state directory: created if missing, checked writable, and locked for one agent.

Two agents on one SQLite file would each believe they own the outbox and the chargers'
profiles; an exclusive ``flock`` on a lock file inside the directory makes the second one stop at
start-up with a clear message. The lock dies with the process, so a ``kill -9`` leaves nothing
to clean up.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = "flexbridge.lock"


class StateDirectoryError(RuntimeError):
    pass


class StateDirectory:
    name = "state-directory"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    async def start(self) -> None:
        try:
            self.path.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateDirectoryError(f"cannot create state directory {self.path}: {exc}") from exc
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise StateDirectoryError(f"state directory {self.path} is not writable")
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise StateDirectoryError(
                f"another flexbridge process holds {self.path / LOCK_NAME}"
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        log.info("state directory ready", extra={"path": str(self.path)})

    async def stop(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
