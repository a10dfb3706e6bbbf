"""Log formats and secret redaction."""

from __future__ import annotations

import io
import json
import logging

import pytest

from agent.runtime.logs import choose_format, configure_logging


@pytest.fixture(autouse=True)
def _restore_root_logger() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


def test_logfmt_is_one_line_with_fields() -> None:
    out = io.StringIO()
    configure_logging("INFO", "logfmt", stream=out)
    logging.getLogger("agent.test").info('charger "A" said\nhello', extra={"charger": "CP 1"})
    line = out.getvalue()
    assert line.count("\n") == 1
    assert "level=info logger=agent.test" in line
    assert r'msg="charger \"A\" said\nhello"' in line
    assert 'charger="CP 1"' in line


def test_json_has_fields() -> None:
    out = io.StringIO()
    configure_logging("DEBUG", "json", stream=out)
    logging.getLogger("x").debug("hi %s", "there", extra={"n": 3})
    doc = json.loads(out.getvalue())
    assert doc["msg"] == "hi there"
    assert doc["n"] == 3
    assert doc["level"] == "debug"


@pytest.mark.parametrize("fmt", ["human", "logfmt", "json"])
def test_secrets_never_reach_the_stream(fmt: str) -> None:
    out = io.StringIO()
    configure_logging("INFO", fmt, secrets=["hunter2-secret"], stream=out)  # type: ignore[arg-type]
    log = logging.getLogger("x")
    log.info("password is hunter2-secret", extra={"auth": "Basic hunter2-secret"})
    try:
        raise ValueError("bad hunter2-secret")
    except ValueError:
        log.exception("failed")
    text = out.getvalue()
    assert "hunter2-secret" not in text
    assert "***" in text


def test_auto_format_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert choose_format("auto", Tty()) == "human"
    assert choose_format("auto", io.StringIO()) == "logfmt"
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    assert choose_format("auto", Tty()) == "logfmt"
    assert choose_format("json", Tty()) == "json"
