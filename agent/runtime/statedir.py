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

from agent.runtime.service import StartError

log = logging.getLogger(__name__)

LOCK_NAME = "flexbridge.lock"


class StateDirectoryError(StartError):
    """The state directory cannot be created or written."""


class StateDirectoryLocked(StateDirectoryError):
    """Another process holds the directory's lock: try again once it has stopped."""


class StateDirectory:
    name = "state-directory"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    async def start(self) -> None:
        self._fd = self._acquire()
        log.info("state directory ready", extra={"path": str(self.path)})

    def probe(self) -> None:
        """Raise what `start` would, before anything else starts (the CLI's first check),
        and leave the directory unlocked."""
        fd = self._acquire(write_pid=False)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def _acquire(self, write_pid: bool = True) -> int:
        try:
            self.path.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateDirectoryError(
                f"cannot create state directory {self.path}: {exc.strerror}"
            ) from exc
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise StateDirectoryError(f"state directory {self.path} is not writable")
        lock = self.path / LOCK_NAME
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            raise StateDirectoryError(f"cannot open {lock}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise StateDirectoryLocked(
                f"another flexbridge process{f' (pid {holder})' if holder else ''} holds {lock}"
            ) from exc
        if write_pid:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    async def stop(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
