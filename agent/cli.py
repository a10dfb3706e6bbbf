"""The `flexbridge` command line.

Exit codes follow sysexits where systemd can use them: 78 (EX_CONFIG) for a configuration that
cannot be used, so ``RestartPreventExitStatus=78`` stops a restart loop on a broken file.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from agent import __version__
from agent.config import Config, ConfigError, check_files, load_config, summary
from agent.logs import configure_logging

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 2
EX_CONFIG = 78

log = logging.getLogger("agent.cli")


def _cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(Path(args.config))
    except ConfigError as exc:
        print(f"{exc.source}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EX_CONFIG
    file_problems = [] if args.no_files else check_files(config)
    if file_problems:
        print(f"{args.config}: {len(file_problems)} problem(s)", file=sys.stderr)
        for problem in file_problems:
            print(f"  {problem}", file=sys.stderr)
        return EX_CONFIG
    print(f"{args.config}: OK")
    for line in summary(config):
        print(f"  {line}")
    return EX_OK


def _load_or_report(path: Path) -> Config | None:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return None
    problems = check_files(config)
    if problems:
        print(str(ConfigError(str(path), problems)), file=sys.stderr)
        return None
    return config


def _run_config(config: Config) -> int:
    from agent.app import build_components
    from agent.service import ServiceError, serve
    from forecaster.cache import cache_dir_for, point_cache_at

    # Before anything imports numba: compiled kernels live under the state directory.
    point_cache_at(cache_dir_for(config.storage.state_directory))

    configure_logging(config.logging.level, config.logging.format, config.secrets())
    log.info("flexbridge starting", extra={"version": __version__, "site": config.site.id})
    try:
        asyncio.run(serve(build_components(config)))
    except ServiceError as exc:
        log.error("flexbridge could not start: %s", exc)
        return EX_FAILURE
    log.info("flexbridge stopped")
    return EX_OK


def _cmd_run(args: argparse.Namespace) -> int:
    config = _load_or_report(Path(args.config))
    if config is None:
        return EX_CONFIG
    return _run_config(config)


def _cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import DemoError, DemoResult, demo_state_dir, numba_cache_dir, run_demo
    from agent.service import install_signal_handlers
    from forecaster.cache import point_cache_at

    point_cache_at(numba_cache_dir())
    state_dir = Path(args.state_dir) if args.state_dir else demo_state_dir()
    configure_logging("INFO" if args.verbose else "WARNING", "human")
    print(f"flexbridge demo: state in {state_dir} (Ctrl-C stops it)", flush=True)
    stopped_by: list[int] = []

    async def demo() -> DemoResult:
        # SIGINT and SIGTERM cancel the story, so its agent, stations and DSO shut down.
        task = asyncio.current_task()
        assert task is not None

        def stop(sig: int) -> None:
            stopped_by.append(sig)
            task.cancel()

        install_signal_handlers(stop)
        return await run_demo(
            state_dir, speed=args.speed, seed=args.seed, keep_running=args.keep_running
        )

    try:
        result = asyncio.run(demo())
    except DemoError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return EX_FAILURE
    except asyncio.CancelledError:
        if not stopped_by:
            raise
        print("demo stopped", flush=True)
        return 128 + stopped_by[0]
    print(f"done in {result.real_seconds:.0f} s")
    return EX_OK


def _cmd_keys(args: argparse.Namespace) -> int:
    from uftp import keys

    path = Path(args.out)
    if args.show:
        try:
            key = keys.load_signing_key(path)
        except keys.KeyFormatError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EX_FAILURE
    else:
        key = keys.generate_signing_key()
        try:
            keys.write_signing_key(path, key, overwrite=args.force)
        except FileExistsError:
            print(f"error: {path} exists; use --force to replace it", file=sys.stderr)
            return EX_FAILURE
        except OSError as exc:
            print(f"error: cannot write {path}: {exc.strerror}", file=sys.stderr)
            return EX_FAILURE
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
                return EX_FAILURE
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
        return EX_FAILURE
    for name, value in result.figures():
        print(format_figure(name, value))
    return EX_OK


def _cmd_warmup(args: argparse.Namespace) -> int:
    from forecaster.cache import CacheDirectoryError, cache_dir_for, use_cache_dir, warm_up

    if args.config:
        config = _load_or_report(Path(args.config))
        if config is None:
            return EX_CONFIG
        state_dir = config.storage.state_directory
    else:
        state_dir = Path(args.state_dir)
    try:
        cache = use_cache_dir(cache_dir_for(state_dir))
    except CacheDirectoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EX_FAILURE
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
            print("error: the passwords differ", file=sys.stderr)
            return EX_FAILURE
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        print(hash_password(password, ScryptParameters(n=args.scrypt_n)))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EX_FAILURE
    return EX_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flexbridge",
        description="Edge agent bridging EV chargers (OCPP) to flexibility markets (UFTP).",
    )
    parser.add_argument("--version", action="version", version=f"flexbridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the agent with a configuration file")
    run.add_argument("--config", "-c", required=True, help="TOML configuration file")
    run.set_defaults(func=_cmd_run)

    demo = sub.add_parser(
        "demo",
        help="a day of trading on embedded defaults: simulated chargers and DSO, real agent",
    )
    demo.add_argument("--state-dir", help="keep the demo's state here (default: a new temp dir)")
    demo.add_argument(
        "--speed", type=float, default=360.0, help="simulated seconds per real second (360)"
    )
    demo.add_argument("--seed", type=int, default=7, help="seed of the simulated sessions")
    demo.add_argument(
        "--keep-running",
        action="store_true",
        help="keep the agent (and its status page) running after the story, until Ctrl-C",
    )
    demo.add_argument("--verbose", action="store_true", help="show the agent's info logs")
    demo.set_defaults(func=_cmd_demo)

    check = sub.add_parser("check-config", help="validate a configuration file and explain errors")
    check.add_argument("config", help="TOML configuration file")
    check.add_argument(
        "--no-files", action="store_true", help="skip checks of key and certificate files"
    )
    check.set_defaults(func=_cmd_check_config)

    keys = sub.add_parser("keys", help="create a UFTP signing key pair and print the public key")
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
        "chosen from the site's own days before it (re-selected weekly and after a regime "
        "change) and print name: value figures for ours, seasonal naive and the 4-week "
        "same-weekday mean, and the chosen structure with its held-out score against each.",
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
    )
    where = warmup.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", "-c", help="TOML configuration file (its state directory)")
    where.add_argument("--state-dir", help="state directory")
    warmup.set_defaults(func=_cmd_warmup)

    hashpw = sub.add_parser(
        "hash-password",
        help="hash a charger password (read from the terminal or stdin) for the config",
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
        return 130
    return code
