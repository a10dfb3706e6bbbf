"""``python -m ocpp_bridge.simulator``: a fleet of simulated stations in a process of its own."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

from ocpp_bridge.simulator.common import ProtocolName
from ocpp_bridge.simulator.schedule import StoredProfile
from ocpp_bridge.simulator.state import StationSpec
from ocpp_bridge.simulator.station import SimulatedStation


async def run_fleet(
    url: str,
    specs: Sequence[StationSpec],
    password: str | None,
    *,
    strict: bool = True,
    report_profiles: bool = False,
    plug_in_wh: float = 0.0,
    out: Callable[[str], None] = print,
) -> None:
    """Run stations until cancelled; print ``ready <n>`` once all booted and, if asked,
    ``accepted <charger> <evse> <profile id> <stack level> <unix time>`` per profile.

    With `plug_in_wh` every EVSE gets an EV needing that much (11 kW, leaving in 8 h) once
    the fleet is ready, so a CSMS has sessions to dispatch."""

    def report(station: SimulatedStation, profile: StoredProfile) -> None:
        out(
            f"accepted {station.charger_id} {profile.evse_id} {profile.profile_id} "
            f"{profile.stack_level} {time.time():.6f}"
        )

    stations = [
        SimulatedStation(
            spec,
            url,
            password=password,
            strict=strict,
            on_profile=report if report_profiles else None,
        )
        for spec in specs
    ]
    try:
        for station in stations:
            await station.start()
        await asyncio.gather(*(s.wait_ready() for s in stations))
        if plug_in_wh > 0:
            for n, station in enumerate(stations):
                leave = station.clock.now() + timedelta(hours=8)
                for evse_id in station.evses:
                    station.plug_in(evse_id, plug_in_wh, 11_000.0, leave, f"FLEET{n:05d}{evse_id}")
        out(f"ready {len(stations)}")
        await asyncio.Event().wait()
    finally:
        await asyncio.gather(*(s.stop() for s in stations))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m ocpp_bridge.simulator --url ws://127.0.0.1:9000/ocpp --count 500``: a fleet
    of simulated stations in a process of its own, so a benchmark of the CSMS does not pay
    for the stations' CPU. Stops on SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m ocpp_bridge.simulator", description=main.__doc__
    )
    parser.add_argument("--url", required=True, help="CSMS URL without the identity")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--prefix", default="SIM-", help="identities <prefix>0001 onwards")
    parser.add_argument("--protocol", choices=("1.6", "2.0.1", "mixed"), default="mixed")
    parser.add_argument("--evses", type=int, default=1)
    parser.add_argument("--password", default=None, help="HTTP Basic password (profile 1/2)")
    parser.add_argument(
        "--no-strict", action="store_true", help="skip schema validation (less CPU per station)"
    )
    parser.add_argument("--report-profiles", action="store_true")
    parser.add_argument(
        "--plug-in-wh", type=float, default=0.0, help="an EV needing this much on every EVSE"
    )
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be >= 1")

    def protocol(i: int) -> ProtocolName:
        if args.protocol == "mixed":
            return ProtocolName.OCPP16 if i % 2 == 0 else ProtocolName.OCPP201
        return ProtocolName.OCPP16 if args.protocol == "1.6" else ProtocolName.OCPP201

    specs = [
        StationSpec(f"{args.prefix}{i + 1:04d}", protocol(i), evse_count=args.evses)
        for i in range(args.count)
    ]

    def out(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    async def run() -> None:
        task = asyncio.ensure_future(
            run_fleet(
                args.url,
                specs,
                args.password,
                strict=not args.no_strict,
                report_profiles=args.report_profiles,
                plug_in_wh=args.plug_in_wh,
                out=out,
            )
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())


if __name__ == "__main__":
    main()
