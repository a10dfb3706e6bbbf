"""The `flexbridge` command line.

Every error a user can cause ends in one line on stderr that names the cause and the fix, and
an exit code from sysexits (the table is in docs/operations.md); a traceback means a bug.
systemd uses them: ``RestartPreventExitStatus=78`` stops a restart loop on a broken file, while
75 ("try again later", e.g. the state directory is locked by another agent) may restart.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from agent import __version__
from agent.runtime.config import Config
from agent.runtime.configfile import ConfigError, ConfigFileMissing, load_config, summary
from agent.runtime.logs import configure_logging

EX_OK = 0
EX_FAILURE = 1  # a bug: the traceback says where
EX_USAGE = 64  # wrong arguments
EX_DATAERR = 65  # an input file or value is malformed
EX_NOINPUT = 66  # an input file does not exist or cannot be read
EX_CANTCREAT = 73  # an output file or directory cannot be created
EX_IOERR = 74  # reading or writing a file failed
EX_TEMPFAIL = 75  # try again later: another process holds the state directory or a port
EX_NOPERM = 77  # not allowed (e.g. a port below 1024 without the capability)
EX_CONFIG = 78  # the configuration cannot be used
EX_INTERRUPTED = 130  # Ctrl-C

EXIT_CODES = f"""exit codes:
  {EX_OK}    success
  {EX_USAGE}   usage: wrong or missing arguments
  {EX_DATAERR}   malformed input (key file, session file, password)
  {EX_NOINPUT}   an input file does not exist or cannot be read
  {EX_CANTCREAT}   an output file or directory cannot be created
  {EX_IOERR}   reading or writing a file failed
  {EX_TEMPFAIL}   try again later (state directory locked by another agent, port in use)
  {EX_NOPERM}   permission denied (e.g. a port below 1024)
  {EX_CONFIG}   the configuration cannot be used (every problem is listed); demo --fleet:
        nats-server or PostgreSQL 15 is not installed (the line names the package)
  {EX_INTERRUPTED}  interrupted (Ctrl-C)"""

log = logging.getLogger("agent.cli")
_P = TypeVar("_P", bound=argparse.ArgumentParser)
_T = TypeVar("_T")


def _error(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def _report_config(exc: ConfigError) -> int:
    if isinstance(exc, ConfigFileMissing):
        reason = "; ".join(str(p) for p in exc.problems)
        return _error(f"configuration {exc.source}: {reason}", EX_NOINPUT)
    print(f"{exc.source}: {len(exc.problems)} problem(s)", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    return EX_CONFIG


def _start_failure(exc: BaseException, component: str, state: Path) -> tuple[str, int]:
    """One line and an exit code for an expected start-up failure."""
    from agent.runtime.statedir import StateDirectoryError, StateDirectoryLocked
    from agent.storage.db import DatabaseError

    if isinstance(exc, StateDirectoryLocked):
        return (
            f"{exc}; stop that agent first (systemctl stop flexbridge), or give this one "
            "another state directory",
            EX_TEMPFAIL,
        )
    if isinstance(exc, StateDirectoryError):
        return f"{exc}; make it writable for this user or choose another one", EX_CANTCREAT
    if isinstance(exc, DatabaseError):
        return (
            f"{exc}; restore the database from a backup or move it aside to start afresh "
            "(see docs/operations.md)",
            EX_DATAERR,
        )
    if isinstance(exc, OSError):
        port = {"ocpp": "ocpp.port", "uftp": "uftp.port", "http": "http.port"}.get(component)
        reason = exc.strerror or str(exc)
        if port is not None and exc.errno == errno.EADDRINUSE:
            return f"{component}: {reason}; stop the other program or change {port}", EX_TEMPFAIL
        if port is not None and exc.errno in (errno.EACCES, errno.EPERM):
            return (
                f"{component}: {reason}; use a port above 1023 in {port} or grant "
                "CAP_NET_BIND_SERVICE",
                EX_NOPERM,
            )
        if port is not None and exc.errno == errno.EADDRNOTAVAIL:
            host = port.replace("port", "host")
            return f"{component}: {reason}; {host} is not an address of this machine", EX_CONFIG
        if exc.errno in (errno.EACCES, errno.EPERM):
            return f"{component}: {exc}; fix the owner or mode of that file", EX_NOPERM
        return f"{component}: {exc} (state directory {state})", EX_IOERR
    return f"{component}: {exc}", EX_FAILURE


def _cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(Path(args.config), files=not args.no_files)
    except ConfigError as exc:
        return _report_config(exc)
    print(f"{args.config}: OK")
    for line in summary(config):
        print(f"  {line}")
    return EX_OK


def _load_or_report(path: Path) -> Config | int:
    """The configuration with its files checked, or the exit code after reporting why not."""
    try:
        return load_config(path, files=True)
    except ConfigError as exc:
        return _report_config(exc)


def _run_config(config: Config) -> int:
    from agent.app import build_components
    from agent.runtime.service import EXPECTED_START_ERRORS, ServiceError, serve
    from agent.runtime.statedir import StateDirectory, StateDirectoryError
    from forecaster.cache import cache_dir_for, point_cache_at

    # First: a second agent on the same state says so and nothing else.
    try:
        StateDirectory(config.storage.state_directory).probe()
    except StateDirectoryError as exc:
        message, code = _start_failure(exc, "state-directory", config.storage.state_directory)
        return _error(message, code)
    # Before anything imports numba: compiled kernels live under the state directory.
    point_cache_at(cache_dir_for(config.storage.state_directory))

    configure_logging(config.logging.level, config.logging.format, config.secrets())
    log.info("flexbridge starting", extra={"version": __version__, "site": config.site.id})
    try:
        asyncio.run(serve(build_components(config)))
    except ServiceError as exc:
        cause = exc.__cause__
        if isinstance(cause, EXPECTED_START_ERRORS):
            message, code = _start_failure(cause, exc.component, config.storage.state_directory)
            return _error(message, code)
        log.error("flexbridge could not start: %s", exc)
        return EX_FAILURE
    log.info("flexbridge stopped")
    return EX_OK


def _cmd_run(args: argparse.Namespace) -> int:
    config = _load_or_report(Path(args.config))
    if isinstance(config, int):
        return config
    return _run_config(config)


async def _until_signal(work: Callable[[], Awaitable[_T]], stopped_by: list[int]) -> _T:
    """`work()`, cancelled by SIGINT or SIGTERM (noted in `stopped_by`) so that a demo's
    agents, stations and servers shut down rather than being left behind."""
    from agent.runtime.service import install_signal_handlers

    task = asyncio.current_task()
    assert task is not None

    def stop(sig: int) -> None:
        stopped_by.append(sig)
        task.cancel()

    install_signal_handlers(stop)
    return await work()


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.fleet:
        return _cmd_demo_fleet(args)
    import shutil
    import tempfile

    from agent.demo.defaults import demo_state_dir, numba_cache_dir
    from agent.demo.scenario import DemoError, DemoResult, run_demo
    from agent.runtime.service import EXPECTED_START_ERRORS, ServiceError
    from forecaster.cache import point_cache_at

    point_cache_at(numba_cache_dir())
    temporary = not args.state_dir
    state_dir = Path(args.state_dir) if args.state_dir else demo_state_dir()
    report: Path = Path(args.report) if args.report else state_dir / "report.html"
    if temporary and not args.report:
        fd, name = tempfile.mkstemp(prefix="flexbridge-demo-report-", suffix=".html")
        os.close(fd)
        report = Path(name)
    if args.verbose:
        # The agent's own log lines, on wall-clock time, to stderr.
        configure_logging("INFO", "human")
    where = "a temporary directory, removed at the end" if temporary else f"{state_dir} (kept)"
    print(
        "flexbridge demo: a day of trading in about a minute; it ends by itself "
        f"(Ctrl-C stops it early). State in {where}.",
        flush=True,
    )
    stopped_by: list[int] = []

    def demo() -> Awaitable[DemoResult]:
        return run_demo(
            state_dir,
            speed=args.speed,
            seed=args.seed,
            keep_running=args.keep_running,
            report=report,
            log_to_timeline=not args.verbose,
        )

    result: DemoResult | None = None
    try:
        result = asyncio.run(_until_signal(demo, stopped_by))
    except DemoError as exc:
        return _error(f"the demo's story broke off: {exc}", EX_FAILURE)
    except ServiceError as exc:  # the agent's components, started as `run` starts them
        cause = exc.__cause__
        if isinstance(cause, EXPECTED_START_ERRORS):
            message, code = _start_failure(cause, exc.component, state_dir)
            return _error(message, code)
        raise
    except EXPECTED_START_ERRORS as exc:
        message, code = _start_failure(exc, "demo", state_dir)
        return _error(message, code)
    except asyncio.CancelledError:
        if not stopped_by:
            raise
        print("demo stopped", flush=True)
        return 128 + stopped_by[0]
    finally:
        if temporary:
            shutil.rmtree(state_dir, ignore_errors=True)
        if result is None and not args.report and report.exists() and not report.stat().st_size:
            report.unlink()
    print(f"done in {result.real_seconds:.0f} s; open the report in a browser", flush=True)
    return EX_OK


def _cmd_demo_fleet(args: argparse.Namespace) -> int:
    import shutil

    from agent.demo.defaults import numba_cache_dir
    from agent.demo.fleet import FleetDemoError, FleetResult, fleet_state_dir, run_fleet_demo
    from agent.demo.infra import InfraError, InfraMissing
    from agent.runtime.service import EXPECTED_START_ERRORS, ServiceError
    from forecaster.cache import point_cache_at

    for flag, given in (
        ("--state-dir", args.state_dir),
        ("--report", args.report),
        ("--keep-running", args.keep_running),
    ):
        if given:
            return _error(f"{flag} does not apply to demo --fleet", EX_USAGE)
    point_cache_at(numba_cache_dir())
    if args.verbose:
        configure_logging("INFO", "human")
    state_dir = fleet_state_dir()
    print(
        "flexbridge demo --fleet: three sites, two congestion points, one aggregator, in real "
        "time; it ends by itself (Ctrl-C stops it early). State in a temporary directory, "
        "removed at the end.",
        flush=True,
    )
    stopped_by: list[int] = []
    try:
        result: FleetResult = asyncio.run(
            _until_signal(lambda: run_fleet_demo(state_dir), stopped_by)
        )
    except InfraMissing as exc:
        return _error(str(exc), EX_CONFIG)
    except InfraError as exc:
        return _error(f"a server of the fleet demo did not start: {exc}", EX_TEMPFAIL)
    except FleetDemoError as exc:
        return _error(f"the fleet demo's story broke off: {exc}", EX_FAILURE)
    except ServiceError as exc:
        cause = exc.__cause__
        if isinstance(cause, EXPECTED_START_ERRORS):
            message, code = _start_failure(cause, exc.component, state_dir)
            return _error(message, code)
        raise
    except asyncio.CancelledError:
        if not stopped_by:
            raise
        print("demo stopped", flush=True)
        return 128 + stopped_by[0]
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    print(f"done in {result.real_seconds:.0f} s; temporary directory removed", flush=True)
    return EX_OK


def _cmd_keys(args: argparse.Namespace) -> int:
    from uftp import keys

    path = Path(args.out)
    if args.show:
        try:
            key = keys.load_signing_key(path)
        except keys.KeyFormatError as exc:
            unreadable = isinstance(exc.__cause__, OSError)
            fix = "check the path" if unreadable else "it is not a flexbridge signing key"
            return _error(f"{exc}; {fix}", EX_NOINPUT if unreadable else EX_DATAERR)
    else:
        key = keys.generate_signing_key()
        try:
            keys.write_signing_key(path, key, overwrite=args.force)
        except FileExistsError:
            return _error(
                f"{path} exists; use --force to replace it (the DSO then needs the new public "
                "key), or --show to print its public key",
                EX_CANTCREAT,
            )
        except OSError as exc:
            return _error(
                f"cannot write {path}: {exc.strerror}; choose a writable directory",
                EX_CANTCREAT,
            )
        print(f"private key: {path} (mode 0600)")
    cs1 = keys.public_key_cs1(key)
    print(f"public key: {keys.public_key_b64(key)}")
    print(f"cs1: {cs1}")
    domain = args.domain or "<your-domain>"
    print(f'dns txt: _{args.role}._usef.{domain}. IN TXT "{cs1}"')
    return EX_OK


def _cmd_backtest(args: argparse.Namespace) -> int:
    from datetime import date, time

    from forecaster.backtest import (
        BacktestConfig,
        BacktestError,
        format_figure,
        parse_holidays,
        run_backtest,
    )
    from forecaster.calendar import CalendarError
    from forecaster.sessions import SessionFileError

    try:
        holidays = parse_holidays(args.holidays or [])
        if args.holidays_file:
            path = Path(args.holidays_file)
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                print(f"error: cannot read {path}: {exc.strerror}", file=sys.stderr)
                return EX_NOINPUT
            holidays |= parse_holidays(lines, str(path))
        if bool(args.sessions) == bool(args.synthetic):
            print("error: give either --sessions FILE ... or --synthetic NAME", file=sys.stderr)
            return EX_FAILURE
        config = BacktestConfig(
            session_files=[Path(f) for f in args.sessions or []],
            start=date.fromisoformat(args.start) if args.start else None,
            end=date.fromisoformat(args.end) if args.end else None,
            method=args.method,
            power_kw=args.power_kw,
            timezone=args.timezone,
            holidays=holidays,
            origin=time.fromisoformat(args.origin) if args.origin else None,
            holidays_country=args.holidays_country,
            holidays_subdivision=args.holidays_subdivision,
            synthetic=args.synthetic,
            synthetic_days=args.synthetic_days,
            seed=args.seed,
        )
        result = run_backtest(config)
    except (SessionFileError, BacktestError, CalendarError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EX_NOINPUT if isinstance(exc.__cause__, OSError) else EX_DATAERR
    for name, value in result.figures():
        print(format_figure(name, value))
    return EX_OK


def _cmd_warmup(args: argparse.Namespace) -> int:
    from forecaster.cache import CacheDirectoryError, cache_dir_for, use_cache_dir, warm_up

    if args.config:
        config = _load_or_report(Path(args.config))
        if isinstance(config, int):
            return config
        state_dir = config.storage.state_directory
    else:
        state_dir = Path(args.state_dir)
    try:
        cache = use_cache_dir(cache_dir_for(state_dir))
    except CacheDirectoryError as exc:
        return _error(f"{exc}; run warmup as the user the agent runs as", EX_CANTCREAT)
    report = warm_up()
    print(f"kernel_cache: {cache}")
    print(f"kernels_compiled: {report.compiled}")
    print(f"kernels_loaded: {report.loaded}")
    print(f"warmup_s: {report.seconds:.3f}")
    return EX_OK


def _cmd_hash_password(args: argparse.Namespace) -> int:
    """Hash a charger's Basic-auth password for ``ocpp.chargers[].password_hash``."""
    import getpass

    from ocpp_bridge.passwords import ScryptParameters, hash_password

    # Never from the command line: it would end up in the shell history and in `ps`.
    if sys.stdin.isatty():
        password = getpass.getpass("charger password: ")
        if getpass.getpass("again: ") != password:
            return _error("the passwords differ; type the same one twice", EX_DATAERR)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        params = ScryptParameters(n=args.scrypt_n)
    except ValueError as exc:
        return _error(f"--scrypt-n: {exc}", EX_USAGE)
    try:
        print(hash_password(password, params))
    except ValueError as exc:
        return _error(f"{exc}; use the charger's 16-64 character password", EX_DATAERR)
    return EX_OK


def _cmd_aggregator_run(args: argparse.Namespace) -> int:
    from agent.central.config import load_central_config

    try:
        config = load_central_config(Path(args.config))
    except ConfigError as exc:
        return _report_config(exc)
    from agent.central.app import build_aggregator, secrets
    from agent.central.db import SchemaTooNew
    from agent.central.natsbus import CentralNatsBus
    from agent.runtime.clock import ClockFileError, clock_from_environment
    from agent.runtime.service import EXPECTED_START_ERRORS, ServiceError, serve

    configure_logging(config.logging.level, config.logging.format, secrets(config))
    log.info("flexbridge aggregator starting", extra={"version": __version__})
    try:
        clock = clock_from_environment()
    except ClockFileError as exc:
        return _error(str(exc), EX_CONFIG)
    bus = CentralNatsBus(config.nats)
    try:
        asyncio.run(
            serve(build_aggregator(config, bus, clock=clock.now, bus_component=bus).components)
        )
    except ServiceError as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
            return _error(
                f"{exc.component}: {cause.strerror}; stop the other program or change "
                "uftp.port / http.port",
                EX_TEMPFAIL,
            )
        if isinstance(cause, SchemaTooNew):
            return _error(f"{exc.component}: {cause}", EX_DATAERR)
        if isinstance(cause, EXPECTED_START_ERRORS):
            # The database or the bus cannot be reached (yet): systemd may try again.
            return _error(f"{exc.component}: {cause}", EX_TEMPFAIL)
        log.error("flexbridge aggregator could not start: %s", exc)
        return EX_FAILURE
    log.info("flexbridge aggregator stopped")
    return EX_OK


def _cmd_aggregator_add_site(args: argparse.Namespace) -> int:
    from agent.central.config import load_central_config
    from agent.fleet.protocol import check_site

    try:
        check_site(args.site)
    except ValueError as exc:
        return _error(str(exc), EX_USAGE)
    try:
        config = load_central_config(Path(args.config))
    except ConfigError as exc:
        return _report_config(exc)
    from agent.central.app import PortfolioError, join_site
    from agent.central.natsbus import CentralNatsBus
    from agent.fleet.ports import BusUnavailable
    from agent.runtime.service import StartError

    async def add() -> bool:
        bus = CentralNatsBus(config.nats)
        await bus.start()
        try:
            return await join_site(
                config, bus, args.site, args.congestion_point, args.credentials_ref
            )
        finally:
            await bus.stop()

    try:
        new = asyncio.run(add())
    except PortfolioError as exc:
        return _error(f"{exc}; add it to congestion_points in {args.config}", EX_DATAERR)
    except (StartError, BusUnavailable) as exc:
        return _error(str(exc), EX_TEMPFAIL)
    verb = "added to" if new else "already in"
    print(f"site {args.site} {verb} the portfolio at {args.congestion_point}")
    return EX_OK


def _cmd_aggregator_nats_config(args: argparse.Namespace) -> int:
    from agent.central.natsfiles import NatsFileError, render, write

    try:
        rendered = render(Path(args.cluster))
        written = write(rendered, Path(args.out))
    except NatsFileError as exc:
        return _error(str(exc), exc.exit_code)
    for path in written:
        print(path)
    print(f"{len(rendered.sites)} site user(s): {', '.join(rendered.sites) or 'none'}")
    return EX_OK


class _Formatter(argparse.HelpFormatter):
    """Descriptions wrapped as usual; the exit-code table kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("exit codes:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line with exit code 64 (argparse's own: usage text and 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EX_USAGE, f"error: {self.prog}: {message}; see {self.prog} --help\n")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not above 0")
    return value


def _command(sub: argparse._SubParsersAction[_P], name: str, **kwargs: Any) -> _P:
    """A subcommand whose help ends with the exit codes, as the top-level help does."""
    return sub.add_parser(name, epilog=EXIT_CODES, formatter_class=_Formatter, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="flexbridge",
        description="Edge agent bridging EV chargers (OCPP) to flexibility markets (UFTP).",
        epilog=EXIT_CODES,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"flexbridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _command(
        sub,
        "run",
        help="run the agent with a configuration file",
        description="Run the agent until SIGTERM or SIGINT: the OCPP central system, the UFTP "
        "participant, forecasts, trading and dispatch, with its state in "
        "storage.state_directory. The configuration and its files are checked first "
        "(as check-config does); one agent per state directory.",
    )
    run.add_argument("--config", "-c", required=True, help="TOML configuration file")
    run.set_defaults(func=_cmd_run)

    demo = sub.add_parser(
        "demo",
        help="a day of trading on embedded defaults: simulated chargers and DSO, real agent",
        description="A day of trading in about a minute: the real agent on loopback against "
        "20 simulated charging stations and a simulated DSO, on accelerated time. Prints a "
        "timeline, writes an HTML report with the day's chart and ends by itself.",
    )
    demo.add_argument(
        "--state-dir",
        help="keep the demo's state (and report) here; default: a temporary directory that "
        "is removed at the end",
    )
    demo.add_argument(
        "--report", metavar="FILE", help="write the HTML report here (default: a new file in /tmp)"
    )
    demo.add_argument(
        "--speed", type=_positive, default=360.0, help="simulated seconds per real second (360)"
    )
    demo.add_argument("--seed", type=int, default=7, help="seed of the simulated sessions")
    demo.add_argument(
        "--keep-running",
        action="store_true",
        help="keep the agent (and its status page) running after the story, until Ctrl-C",
    )
    demo.add_argument("--verbose", action="store_true", help="show the agent's info logs")
    demo.add_argument(
        "--fleet",
        action="store_true",
        help="instead: a small fleet in real time (three site agents on two congestion "
        "points, a NATS cluster, PostgreSQL, the central aggregator and the DSO) in under a "
        "minute; needs nats-server and postgresql-15 (--speed, --seed do not apply)",
    )
    demo.set_defaults(func=_cmd_demo)

    check = sub.add_parser(
        "check-config",
        help="validate a configuration file and explain errors",
        description="Validate a configuration file (with the FLEXBRIDGE_* environment "
        "overrides) and print every problem at once, each at its key: wrong values, keys "
        "that contradict each other, and key or certificate files that cannot be read. Exit "
        "code 78 when there is any, else a short summary.",
    )
    check.add_argument("config", help="TOML configuration file")
    check.add_argument(
        "--no-files", action="store_true", help="skip checks of key and certificate files"
    )
    check.set_defaults(func=_cmd_check_config)

    keys = sub.add_parser(
        "keys",
        help="create a UFTP signing key pair and print the public key",
        description="Create the Ed25519 key that signs our UFTP messages (file mode 0600) and "
        "print its public key as base64, in the cs1. form and as the DNS TXT record the DSO "
        "looks up; --show prints them for an existing key.",
    )
    keys.add_argument("--out", "-o", required=True, help="private key file to write (mode 0600)")
    keys.add_argument("--domain", help="our UFTP domain, for the DNS TXT record line")
    keys.add_argument("--role", default="AGR", choices=["AGR", "DSO", "CRO"])
    keys.add_argument("--force", action="store_true", help="replace an existing key file")
    keys.add_argument(
        "--show", action="store_true", help="print the public key of an existing key file"
    )
    keys.set_defaults(func=_cmd_keys)

    backtest = sub.add_parser(
        "backtest",
        help="score the load forecast on session files (ACN CSV) against two baselines",
        description="Reconstruct 15-minute site power from sessions (ASAP rule) or take a "
        "seeded synthetic site, forecast each test day at 00:00 local time with the structure "
        "chosen from the site's own days before it (re-selected every day) and print "
        "name: value figures for ours, seasonal naive and the 4-week same-weekday mean, "
        "and the chosen structure with its held-out score against each.",
    )
    backtest.add_argument("--sessions", nargs="+", metavar="FILE", help="ACN CSV files (or .gz)")
    backtest.add_argument(
        "--synthetic",
        metavar="NAME",
        help="a seeded synthetic site instead of session files: odd_weekday, night_shift, "
        "fleet_depot or doubling (docs/forecasting.md)",
    )
    backtest.add_argument(
        "--synthetic-days", type=int, default=140, help="days of the synthetic site (default 140)"
    )
    backtest.add_argument("--seed", type=int, default=0, help="seed of the synthetic site")
    backtest.add_argument("--start", metavar="DATE", help="first test day (YYYY-MM-DD)")
    backtest.add_argument("--end", metavar="DATE", help="last test day (YYYY-MM-DD)")
    backtest.add_argument(
        "--method",
        default="selected",
        help="selected (default: per-site structure selection), profile (the fixed day-type "
        "profile) or one of its ablations",
    )
    backtest.add_argument(
        "--power-kw", type=float, default=6.6, help="ASAP power per session (default 6.6)"
    )
    backtest.add_argument("--timezone", default="America/Los_Angeles", help="site time zone (IANA)")
    backtest.add_argument(
        "--holidays", nargs="+", metavar="DATE", help="local dates forecast like Sundays"
    )
    backtest.add_argument("--holidays-file", metavar="FILE", help="one date per line, # comments")
    backtest.add_argument(
        "--holidays-country",
        metavar="CC",
        help="public holidays of this country (ISO 3166-1, e.g. US) from the holidays package",
    )
    backtest.add_argument(
        "--holidays-subdivision", metavar="SUB", help="and of this subdivision (e.g. CA)"
    )
    backtest.add_argument(
        "--origin",
        metavar="HH:MM",
        help="intraday: forecast from this local time with the "
        "plugged-in sessions (default: day-ahead at 00:00)",
    )
    backtest.set_defaults(func=_cmd_backtest)

    warmup = sub.add_parser(
        "warmup",
        help="compile the forecaster's kernels into the cache under the state directory",
        description="Compile the forecaster's numba kernels into the cache under the state "
        "directory, so the agent's first forecast after an install or upgrade does not wait "
        "for the compiler. Run it as the user the agent runs as.",
    )
    where = warmup.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", "-c", help="TOML configuration file (its state directory)")
    where.add_argument("--state-dir", help="state directory")
    warmup.set_defaults(func=_cmd_warmup)

    aggregator = _command(
        sub,
        "aggregator",
        help="the central aggregator of a fleet of sites (one UFTP participant for all)",
        description="The central aggregator: one UFTP participant for the sites of a fleet, "
        "their data and commands over NATS JetStream, its state in PostgreSQL "
        "(docs/fleet.md).",
    )
    agg = aggregator.add_subparsers(dest="aggregator_command", required=True, metavar="COMMAND")
    agg_run = _command(
        agg,
        "run",
        help="run the aggregator until SIGTERM or SIGINT",
        description="Run the aggregator: migrate the database, make the sites' consumers, "
        "serve the UFTP endpoint and the operator view, trade. Several processes may run on "
        "one database and cluster.",
    )
    agg_run.add_argument("--config", "-c", required=True, help="the aggregator's TOML file")
    agg_run.set_defaults(func=_cmd_aggregator_run)
    agg_add = _command(
        agg,
        "add-site",
        help="add a site to the portfolio and make its command consumer",
        description="Add a site to the portfolio at a congestion point of the configuration "
        "and make its durable command consumer on the bus, before any command for it. "
        "Adding a site that is there already changes nothing; a site never moves to another "
        "congestion point.",
    )
    agg_add.add_argument("site", help="the site's id (lowercase letters, digits, - and _)")
    agg_add.add_argument(
        "--congestion-point", required=True, help="its congestion point's entity address"
    )
    agg_add.add_argument(
        "--credentials-ref", help="where its NATS credentials are kept (never the secret)"
    )
    agg_add.add_argument("--config", "-c", required=True, help="the aggregator's TOML file")
    agg_add.set_defaults(func=_cmd_aggregator_add_site)
    agg_nats = _command(
        agg,
        "nats-config",
        help="render the nats-server configuration of each cluster node",
        description="Render /etc/flexbridge/nats/<node>.conf for every node of the fleet's "
        "NATS cluster from a cluster description (nodes, secret files) and one secret file per "
        "site (<site id>.secret in its site_secrets_dir): the centre's user, every site's user "
        "with its permissions, routes and JetStream. Render again after adding a site and "
        "reload each node (docs/fleet.md, Bus).",
    )
    agg_nats.add_argument("--cluster", required=True, help="the cluster description (TOML)")
    agg_nats.add_argument("--out", required=True, help="where to write <node>.conf")
    agg_nats.set_defaults(func=_cmd_aggregator_nats_config)

    hashpw = sub.add_parser(
        "hash-password",
        help="hash a charger password (read from the terminal or stdin) for the config",
        description="Print the scrypt hash of a charger's Basic-auth password (16-64 "
        "characters) for ocpp.chargers[].password_hash. The password is read from the "
        "terminal (twice) or the first line of stdin, never from the command line.",
    )
    hashpw.add_argument(
        "--scrypt-n",
        type=int,
        default=2**12,
        help="scrypt cost (power of two; default 4096: ~12 ms and 4 MiB per check)",
    )
    hashpw.set_defaults(func=_cmd_hash_password)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return EX_INTERRUPTED
    return code
