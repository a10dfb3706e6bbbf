"""What the handshake reads from a charger: its identity, Basic credentials, certificate name,
and what it hands on (`Admission`).

Also the password checks off the event loop, and the KDF's memory hand-back after a burst.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from websockets.datastructures import Headers

from ocpp_bridge.events import ProtocolVersion
from ocpp_bridge.passwords import (
    CredentialCache,
    PasswordHashError,
    hash_password,
    verify_password,
)
from ocpp_bridge.settings import CHARGER_ID_PATTERN, ChargerRecord

log = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass(frozen=True)
class Admission:
    """What the handshake established about one connection, for `CentralSystem.serve`.

    `password` is the HTTP Basic password already checked against the registry (None without
    Basic auth): a central system that relays the charger passes it on, nothing keeps it.
    """

    record: ChargerRecord
    version: ProtocolVersion
    password: str | None


def identity_from_path(path: str) -> str | None:
    """The charger identity: the last non-empty path segment, percent-decoded."""
    segments = [s for s in urlsplit(path).path.split("/") if s]
    if not segments:
        return None
    identity = unquote(segments[-1])
    return identity if CHARGER_ID_PATTERN.match(identity) else None


def basic_credentials(headers: Headers) -> tuple[str, str] | None:
    header = headers.get("Authorization")
    if header is None:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def certificate_common_name(peercert: Any) -> str | None:
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to give back
        return None
    return trim


_malloc_trim = _load_malloc_trim()


def release_kdf_memory() -> None:
    """Give scrypt's working memory back to the OS after a burst of password checks.

    Each check allocates 16 MiB; glibc then raises its mmap threshold and keeps such blocks in
    the worker threads' heaps, which left ~64 MB resident for good after 1,000 chargers
    logged in (bench/ocpp.py). malloc_trim returns the free pages.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


class PasswordChecks:
    """scrypt off the event loop, so other chargers keep being served during a check (tens of
    ms each): two threads use both cores of a gateway while bounding memory (each check takes
    16 MiB; glibc keeps a heap per thread). `cache` spares a repeated check its cost."""

    def __init__(self) -> None:
        self.cache = CredentialCache()
        self._pool: ThreadPoolExecutor | None = None
        self._jobs = 0

    def open(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ocpp-kdf")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def hash(self, password: str) -> str:
        """The stored form of a new charger's password; ValueError if it is unusable."""
        return await self._run(hash_password, password)

    async def verify(self, identity: str, password: str, stored: str) -> bool:
        if self.cache.known(identity, password, stored):
            return True
        try:
            return await self._run(self._verify_and_remember, identity, password, stored)
        except PasswordHashError as exc:
            log.error("charger %s: stored password hash unusable: %s", identity, exc)
            return False

    def _verify_and_remember(self, identity: str, password: str, stored: str) -> bool:
        """In the KDF thread: a result is kept even if the waiting handshake gave up."""
        ok = verify_password(password, stored)
        if ok:
            self.cache.remember(identity, password, stored)
        return ok

    async def _run(self, function: Callable[..., _T], *args: Any) -> _T:
        self._jobs += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)
        finally:
            self._jobs -= 1
            if self._jobs == 0 and self._pool is not None:
                # A burst of checks is over (e.g. every charger after a restart).
                self._pool.submit(release_kdf_memory)
