"""Every error a user can cause on the command line: one line on stderr naming the cause and
the fix, the documented exit code, never a traceback."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import pytest

from agent.cli import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_DATAERR,
    EX_NOINPUT,
    EX_TEMPFAIL,
    EX_USAGE,
    EXIT_CODES,
    build_parser,
    main,
)
from agent.runtime.statedir import StateDirectory

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "systemd" / "flexbridge.toml.example"


def _outcome(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: usage errors, --help
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def config(tmp_path: Path) -> Callable[..., Path]:
    """A valid configuration (key file written), with text replacements applied."""

    def make(*replace: tuple[str, str], state: Path | None = None) -> Path:
        key = tmp_path / "agr.key"
        if not key.exists():
            assert main(["keys", "--out", str(key)]) == 0
        text = EXAMPLE.read_text().replace("/etc/flexbridge/agr-signing.key", str(key))
        text = text.replace(
            'state_directory = "/var/lib/flexbridge"',
            f'state_directory = "{state or tmp_path / "state"}"',
        )
        for old, new in replace:
            assert old in text, old
            text = text.replace(old, new)
        path = tmp_path / "flexbridge.toml"
        path.write_text(text)
        return path

    return make


@pytest.fixture
def locked_state(tmp_path: Path) -> Iterator[Path]:
    """A state directory held by another agent (its lock, in this process)."""
    state = tmp_path / "state"
    holder = StateDirectory(state)
    asyncio.run(holder.start())
    try:
        yield state
    finally:
        asyncio.run(holder.stop())


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["run"],
        ["check-config"],
        ["keys"],
        ["warmup"],
        ["demo", "--speed", "0"],
        ["hash-password", "--scrypt-n", "many"],
    ],
)
def test_usage_errors_are_one_line_and_64(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _outcome(argv, capsys)
    assert code == EX_USAGE
    assert "--help" in _one_line(err)


def test_every_subcommand_describes_itself_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in ("run", "keys", "check-config", "warmup", "demo", "hash-password", "backtest"):
        assert commands[name].description, f"{name} --help has no description"
    code, out, _ = _outcome(["--help"], capsys)
    assert code == 0
    assert "exit codes:" in out
    assert "78   the configuration cannot be used" in EXIT_CODES


def test_run_on_a_locked_state_directory_is_one_line_and_75(
    config: Callable[..., Path], locked_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(state=locked_state)
    capsys.readouterr()
    code, out, err = _outcome(["run", "--config", str(path)], capsys)
    assert code == EX_TEMPFAIL
    line = _one_line(err)
    assert "another flexbridge process" in line
    assert "stop that agent first" in line
    assert out == ""


def test_demo_on_a_locked_state_directory_is_one_line_and_75(
    locked_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _outcome(["demo", "--state-dir", str(locked_state)], capsys)
    assert code == EX_TEMPFAIL
    assert "another flexbridge process" in _one_line(err)
    assert not (locked_state / "flexbridge.sqlite").exists(), "the demo wrote into it anyway"


def test_run_where_the_state_directory_cannot_be_created(
    config: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = _outcome(["run", "--config", str(config(state=blocker / "state"))], capsys)
    assert code == EX_CANTCREAT
    assert "cannot create state directory" in _one_line(err)


def test_a_missing_configuration_file_is_66(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["run", "--config"], ["check-config"], ["warmup", "--config"]):
        code, _, err = _outcome([*argv, str(tmp_path / "nope.toml")], capsys)
        assert code == EX_NOINPUT, argv
        assert "nope.toml: no such file" in _one_line(err)


def test_check_config_names_four_kinds_of_mistake_in_one_pass(
    config: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(
        ("heartbeat_interval_s = 300", "heartbeat_interval_s = 0"),  # field
        ("safe_limit_w = 200000", "safe_limit_w = 300000"),  # cross-field
        ('dso_domain = "dso.example.com"', 'dso_domain = "dso.example.org"'),  # reference
    )
    (tmp_path / "agr.key").unlink()  # file
    code, _, err = _outcome(["check-config", str(path)], capsys)
    assert code == EX_CONFIG
    assert "Traceback" not in err
    assert "4 problem(s)" in err
    assert "ocpp.heartbeat_interval_s: Input should be greater than 0" in err
    assert "safe_limit_w (300000) exceeds connection_capacity_w (250000)" in err
    assert "uftp.signing_key_file: cannot read signing key" in err
    assert "congestion_points[0].dso_domain: 'dso.example.org' is not a DSO" in err
    # run refuses the same file for the same reasons, with the same code.
    code, _, run_err = _outcome(["run", "--config", str(path)], capsys)
    assert code == EX_CONFIG
    assert run_err == err


def test_keys_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "agr.key"
    assert main(["keys", "--out", str(key)]) == 0
    capsys.readouterr()
    cases = [
        (["keys", "--out", str(key)], EX_CANTCREAT, "exists; use --force"),
        (["keys", "--out", str(tmp_path / "no" / "dir" / "k")], EX_CANTCREAT, "cannot write"),
        (["keys", "--out", str(tmp_path / "missing.key"), "--show"], EX_NOINPUT, "cannot read"),
    ]
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    cases.append((["keys", "--out", str(garbage), "--show"], EX_DATAERR, "not a flexbridge"))
    for argv, expected, words in cases:
        code, _, err = _outcome(argv, capsys)
        assert code == expected, (argv, err)
        assert words in _one_line(err), argv


def test_hash_password_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    code, _, err = _outcome(["hash-password", "--scrypt-n", "1024"], capsys)
    assert code == EX_DATAERR
    assert "16-64 characters" in _one_line(err)
    monkeypatch.setattr("sys.stdin", io.StringIO("charger-secret-1\n"))
    code, _, err = _outcome(["hash-password", "--scrypt-n", "1000"], capsys)
    assert code == EX_USAGE
    assert "power of two" in _one_line(err)


def test_warmup_where_the_cache_cannot_be_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = _outcome(["warmup", "--state-dir", str(blocker)], capsys)
    assert code == EX_CANTCREAT
    assert "kernel cache directory" in _one_line(err)


def test_backtest_input_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _outcome(["backtest", "--sessions", str(tmp_path / "none.csv")], capsys)
    assert code == EX_NOINPUT
    assert "cannot read" in _one_line(err)
    bad = tmp_path / "bad.csv"
    bad.write_text("vm\n1\n")
    code, _, err = _outcome(["backtest", "--sessions", str(bad)], capsys)
    assert code == EX_DATAERR
    assert "missing column" in _one_line(err)


def test_a_port_in_use_is_one_line_and_75(
    config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The OCPP port is taken by another program: the agent stops what it started and says
    which setting to change."""
    with socket.socket() as taken, socket.socket() as free:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        free.bind(("127.0.0.1", 0))
        ocpp_port, uftp_port = taken.getsockname()[1], free.getsockname()[1]
        free.close()
        path = config(
            ('host = "0.0.0.0"\nport = 9000', f'host = "127.0.0.1"\nport = {ocpp_port}'),
            ('host = "0.0.0.0"\nport = 8443', f'host = "127.0.0.1"\nport = {uftp_port}'),
        )
        code, _, err = _outcome(["run", "--config", str(path)], capsys)
    assert code == EX_TEMPFAIL
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    assert errors[0].startswith("error: ocpp: ")
    assert "change ocpp.port" in errors[0]


def test_a_demo_component_that_cannot_start_is_one_line_and_75(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo starts the agent as `run` does: a port taken between choosing and binding it
    ends the demo as it ends `run`, in one line naming the component."""
    import agent.demo.scenario as scenario

    # As in a process of its own: no log handler left behind by the commands before this one.
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1]])  # the first port chosen is the OCPP listener's
        free_port = scenario._free_port
        monkeypatch.setattr(scenario, "_free_port", lambda: next(ports, None) or free_port())
        code, _, err = _outcome(["demo", "--state-dir", str(tmp_path / "demo")], capsys)
    assert code == EX_TEMPFAIL
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    assert errors[0].startswith("error: ocpp: "), err


def test_the_demo_removes_its_temporary_state_and_keeps_the_report(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `flexbridge demo` leaves behind, with the story itself replaced (it has its own
    end-to-end test): the report, not the state directory, whether the story ends or fails."""
    import agent.demo.scenario
    from agent.demo.scenario import DemoError, DemoResult

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    seen: list[Path] = []

    async def story(state_dir: Path, *, report: Path, **_: object) -> DemoResult:
        seen.append(state_dir)
        await asyncio.to_thread((state_dir / "flexbridge.sqlite").write_text, "state")
        if len(seen) == 2:
            raise DemoError("the DSO did not answer")
        await asyncio.to_thread(report.write_text, "<html>")
        return DemoResult(date(2026, 6, 1), report=report)

    monkeypatch.setattr(agent.demo.scenario, "run_demo", story)
    code, out, _ = _outcome(["demo"], capsys)
    assert code == 0
    assert not seen[0].exists(), "the temporary state directory is removed"
    (report,) = tmp_path.glob("flexbridge-demo-report-*.html")
    assert report.read_text() == "<html>"
    assert "removed at the end" in out

    code, _, err = _outcome(["demo"], capsys)
    assert code == 1
    assert "the DSO did not answer" in _one_line(err)
    assert not seen[1].exists()
    assert list(tmp_path.glob("flexbridge-demo-report-*.html")) == [report], "no empty report"


def test_a_file_that_is_not_our_database_is_one_line_and_65(
    config: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "flexbridge.sqlite").write_bytes(b"not SQLite at all, " * 300)
    with socket.socket() as a, socket.socket() as b, socket.socket() as c:
        for s in (a, b, c):
            s.bind(("127.0.0.1", 0))
        ports = [s.getsockname()[1] for s in (a, b, c)]
    path = config(
        ('host = "0.0.0.0"\nport = 9000', f'host = "127.0.0.1"\nport = {ports[0]}'),
        ('host = "0.0.0.0"\nport = 8443', f'host = "127.0.0.1"\nport = {ports[1]}'),
        ("port = 8080", f"port = {ports[2]}"),
        state=state,
    )
    capsys.readouterr()
    code, _, err = _outcome(["run", "--config", str(path)], capsys)
    assert code == EX_DATAERR
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert "file is not a database" in errors[0]
    assert "restore the database from a backup" in errors[0]
