"""What the handshake reads from a charger: its identity, Basic credentials, certificate name,
and what it hands on (`Admission`).

Also the KDF's memory hand-back after a burst of password checks.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import ctypes.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from websockets.datastructures import Headers

from ocpp_bridge.events import ProtocolVersion
from ocpp_bridge.settings import CHARGER_ID_PATTERN, ChargerRecord


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
