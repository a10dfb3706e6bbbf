"""Logging set-up: readable on a terminal, one line per event under systemd, never a secret.

Under systemd (``JOURNAL_STREAM`` or ``INVOCATION_ID`` set) or when piped, each record is one
logfmt line (``level=info logger=agent.runtime.service msg="..." charger=CP1``) so journald and log
shippers can index the fields; ``json`` gives the same fields as one JSON object. Structured
fields come from ``extra={...}`` on the logging call.

Secrets never reach a handler: every known secret value (from the config) is replaced by
``***`` in the rendered line, whatever path it took into the message.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable
from typing import Literal, TextIO

LogFormat = Literal["auto", "human", "logfmt", "json"]

# Attributes every LogRecord has; anything else was passed through `extra=` and is a field.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


def record_fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}


def _logfmt_value(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n\t\\'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg="..." key=value``: greppable, parseable, one line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={ts}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_logfmt_value(record.getMessage())}",
        ]
        parts += [f"{k}={_logfmt_value(v)}" for k, v in record_fields(record).items()]
        if record.exc_info:
            parts.append(f"exc={_logfmt_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc: dict[str, object] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update({k: v for k, v in record_fields(record).items() if k not in doc})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class HumanFormatter(logging.Formatter):
    """``13:04:05 INFO  agent.runtime.service  started  charger=CP1``: for a person at a
    terminal."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(f"{k}={v}" for k, v in record_fields(record).items())
        line = f"{ts} {record.levelname:<7} {record.name}  {record.getMessage()}"
        if fields:
            line += f"  {fields}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class RedactingFormatter(logging.Formatter):
    """Wraps a formatter and masks secret values in whatever it renders."""

    def __init__(self, inner: logging.Formatter, secrets: Iterable[str]) -> None:
        super().__init__()
        self.inner = inner
        # Longest first so a secret that contains another is masked whole.
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def choose_format(requested: LogFormat, stream: TextIO) -> Literal["human", "logfmt", "json"]:
    if requested != "auto":
        return requested
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        return "logfmt"
    return "human" if stream.isatty() else "logfmt"


_FORMATTERS: dict[str, type[logging.Formatter]] = {
    "human": HumanFormatter,
    "logfmt": LogfmtFormatter,
    "json": JsonFormatter,
}


def configure_logging(
    level: str = "INFO",
    fmt: LogFormat = "auto",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> RedactingFormatter:
    """Install one stderr handler on the root logger; returns its formatter for more secrets."""
    stream = stream if stream is not None else sys.stderr
    formatter = RedactingFormatter(_FORMATTERS[choose_format(fmt, stream)](), secrets)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # The ocpp library logs every frame at INFO; websockets and aiohttp are chatty too.
    for noisy in ("ocpp", "websockets", "aiohttp.access", "numba"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    return formatter
