"""UFTP: our codec and endpoint against shapeshifter-uftp 2.4.0, on a 96-ISP D-Prognosis.

``python -m bench uftp [--messages N] [--concurrency C] [--state-dir DIR]``

Figures (one run, same machine, same message):

- ``shapeshifter_seal_unseal_per_s``: the library's ``seal_message`` + ``unseal_message``
  (xsdata serialise, sign, verify, xsdata parse): the baseline.
- ``uftp_seal_verify_parse_per_s``: ours for the same work, plus XSD validation both ways:
  ``to_xml`` (validates), seal into the envelope, parse and validate the envelope, verify,
  ``from_xml`` (hardened parse, XSD, model).
- ``uftp_e2e_per_s``: signed messages per second through our aiohttp endpoint (receive, verify,
  XSD and generic validation, durable store with synchronous=FULL and group commit, 200), posted
  by a keep-alive client in a separate process with C requests in flight over C connections;
  ``uftp_e2e_sequential_per_s`` the same with one request at a time.
- ``shapeshifter_endpoint_per_s``: the library's own DSO service fed the same way (it answers
  200 before verifying anything is processed, and stores nothing), for context.
- last line ``uftp_e2e_vs_shapeshifter_ratio``: ``uftp_e2e_per_s`` over the library's seal +
  unseal rate (target >= 10; docs/uftp.md, "Benchmark", says why it is not reached here).

The client runs in its own process (``python -m bench.uftp client``) so it does not share the
server's event loop or GIL. The database lives under bench/out/ (a real disk, not tmpfs) unless
--state-dir says otherwise, and is deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from bench.report import best_rate, emit, ratio
from uftp import calendar, codec, keys, models, sealing
from uftp.participant import Participant
from uftp.settings import MarketSettings, ParticipantSettings, PeerSettings

AGR = "agr.example.com"
DSO = "dso.example.com"
CONGESTION_POINT = "ean.871685900012636543"
TZ = "Europe/Amsterdam"
PATH = "/shapeshifter/api/v3/message"
HERE = Path(__file__).resolve().parent


def prognosis(now: datetime, revision: int = 1) -> models.DPrognosis:
    period = calendar.today(TZ, now) + timedelta(days=1)
    count = calendar.isp_count(period, TZ, 15)
    return models.DPrognosis(
        sender_domain=AGR,
        recipient_domain=DSO,
        time_stamp=now,
        isp_duration="PT15M",
        time_zone=TZ,
        period=period,
        congestion_point=CONGESTION_POINT,
        revision=revision,
        isps=[models.DPrognosisISP(power=1000 + 7 * i, start=i + 1) for i in range(count)],
    )


# --- (a) codec: ours and the library's -------------------------------------------------------


def library_prognosis(ours: models.DPrognosis) -> Any:
    from shapeshifter_uftp import DPrognosis, DPrognosisISP
    from xsdata.models.datatype import XmlDate

    return DPrognosis(
        version=ours.version,
        sender_domain=ours.sender_domain,
        recipient_domain=ours.recipient_domain,
        time_stamp=ours.time_stamp.isoformat(),
        message_id=ours.message_id,
        conversation_id=ours.conversation_id,
        isp_duration="PT15M",
        time_zone=ours.time_zone,
        period=XmlDate.from_date(ours.period),
        congestion_point=ours.congestion_point,
        revision=ours.revision,
        isps=[DPrognosisISP(power=i.power, start=i.start, duration=i.duration) for i in ours.isps],
    )


def codec_rates(min_time_s: float) -> tuple[float, float, int]:
    from shapeshifter_uftp import transport

    key = SigningKey.generate()
    verify = [key.verify_key]
    message = prognosis(datetime.now(UTC))
    size = len(codec.to_xml(message))

    def ours() -> None:
        body = sealing.seal(codec.to_xml(message), key, AGR, models.Role.AGR)
        envelope = codec.envelope_from_xml(body)
        codec.from_xml(sealing.unseal(envelope, verify))

    library_message = library_prognosis(message)
    secret, public = keys.libsodium_secret_key_b64(key), keys.public_key_b64(key)

    def library() -> None:
        transport.unseal_message(transport.seal_message(library_message, secret), public)

    return best_rate(ours, min_time_s=min_time_s), best_rate(library, min_time_s=min_time_s), size


# --- (b) end to end through the endpoint -----------------------------------------------------


def signed_bodies(key: SigningKey, count: int) -> list[bytes]:
    """Distinct messages (a repeat would take the cheap "Already Submitted" path)."""
    now = datetime.now(UTC)
    template = prognosis(now)
    xml = codec.to_xml(template)
    bodies = []
    for revision in range(1, count + 1):
        # Same size and shape, a fresh MessageID and revision each: re-serialising 96 ISPs
        # thousands of times would only slow the set-up.
        inner = xml.replace(template.message_id.encode(), models.new_message_id().encode(), 1)
        inner = inner.replace(b' Revision="1"', f' Revision="{revision}"'.encode(), 1)
        bodies.append(sealing.seal(inner, key, AGR, models.Role.AGR))
    return bodies


def write_bodies(path: Path, bodies: list[bytes]) -> None:
    with path.open("wb") as out:
        for body in bodies:
            out.write(struct.pack(">I", len(body)))
            out.write(body)


def read_bodies(path: Path) -> list[bytes]:
    data = path.read_bytes()
    bodies, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        bodies.append(data[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return bodies


def run_client(url: str, bodies_path: Path, concurrency: int, warmup: int) -> dict[str, Any]:
    """Post every body from a separate process; returns its measurements."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.uftp",
            "client",
            url,
            str(bodies_path),
            str(concurrency),
            str(warmup),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=HERE.parent,
    )
    data: dict[str, Any] = json.loads(result.stdout)
    return data


async def _post_all(url: str, bodies: list[bytes], concurrency: int, warmup: int) -> dict[str, Any]:
    import aiohttp

    headers = {"Content-Type": "text/xml; charset=utf-8"}
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def post(body: bytes) -> None:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1

        async def run(batch: list[bytes]) -> float:
            queue = list(reversed(batch))
            started = time.perf_counter()

            async def worker() -> None:
                while queue:
                    await post(queue.pop())

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return time.perf_counter() - started

        await run(bodies[:warmup])
        elapsed = await run(bodies[warmup:])
    return {"seconds": elapsed, "messages": len(bodies) - warmup, "statuses": statuses}


def client_main(argv: list[str]) -> None:
    url, path, concurrency, warmup = argv[0], Path(argv[1]), int(argv[2]), int(argv[3])
    print(json.dumps(asyncio.run(_post_all(url, read_bodies(path), concurrency, warmup))))


class OurEndpoint:
    """A DSO-role participant (D-Prognosis is AGR -> DSO) with nothing but its endpoint."""

    def __init__(self, state_dir: Path, agr_key: SigningKey) -> None:
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        settings = ParticipantSettings(
            domain=DSO,
            role=models.Role.DSO,
            signing_key=SigningKey.generate(),
            peers=(
                PeerSettings(
                    AGR, models.Role.AGR, (keys.public_key_b64(agr_key),), "http://127.0.0.1:9/"
                ),
            ),
            market=MarketSettings(TZ, 15),
            rate_limit=None,
        )
        self.database_path = state_dir / "dso.sqlite"
        self.participant = Participant(settings, self.database_path)

    def start(self) -> str:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("endpoint did not start")
        return self.participant.url

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await self.participant.start()
        self._started.set()
        await self._stop.wait()
        await self.participant.stop()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)

    def stored(self) -> int:
        import sqlite3

        conn = sqlite3.connect(str(self.database_path))
        try:
            return int(conn.execute("SELECT COUNT(*) FROM uftp_inbox").fetchone()[0])
        finally:
            conn.close()


def library_endpoint(port: int, agr_key: SigningKey) -> Any:
    """The library's DSO service with every handler a no-op."""
    from shapeshifter_uftp import ShapeshifterDsoService

    def ignore(self: Any, *args: Any) -> None:
        return None

    handlers = dict.fromkeys(ShapeshifterDsoService.__abstractmethods__, ignore)
    quiet = type("QuietDso", (ShapeshifterDsoService,), handlers)
    return quiet(
        sender_domain=DSO,
        signing_key=keys.libsodium_secret_key_b64(SigningKey.generate()),
        key_lookup_function=lambda d, r: keys.public_key_b64(agr_key),
        endpoint_lookup_function=lambda d, r: "http://127.0.0.1:9/",
        host="127.0.0.1",
        port=port,
    )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench uftp")
    parser.add_argument("--messages", type=int, default=4000, help="posts per e2e run")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--library-messages", type=int, default=400)
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds per codec loop")
    parser.add_argument("--state-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)  # per-message INFO logs are not what is measured

    ours, library, size = codec_rates(args.min_time)
    emit("d_prognosis_isps", 96)
    emit("d_prognosis_xml_bytes", size)
    emit("shapeshifter_seal_unseal_per_s", library)
    emit("uftp_seal_verify_parse_per_s", ours)
    emit("uftp_codec_vs_shapeshifter_ratio", ratio(ours, library))

    base = args.state_dir or HERE / "out"
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="uftp-", dir=base))
    try:
        agr_key = SigningKey.generate()
        warmup = min(300, args.messages // 5)
        bodies = signed_bodies(agr_key, args.messages + warmup + 400)
        concurrent_path, sequential_path, library_path = (
            work / "concurrent.bin",
            work / "sequential.bin",
            work / "library.bin",
        )
        write_bodies(concurrent_path, bodies[: args.messages + warmup])
        write_bodies(sequential_path, bodies[args.messages + warmup :])
        endpoint = OurEndpoint(work, agr_key)
        url = endpoint.start()
        try:
            concurrent = run_client(url, concurrent_path, args.concurrency, warmup)
            sequential = run_client(url, sequential_path, 1, 50)
        finally:
            endpoint.stop()
        expected = len(bodies)
        stored = endpoint.stored()
        if concurrent["statuses"] != {"200": args.messages + warmup} or stored != expected:
            raise RuntimeError(f"not every post was stored: {concurrent['statuses']}, {stored}")
        e2e = concurrent["messages"] / concurrent["seconds"]
        emit("uftp_e2e_concurrency", args.concurrency)
        emit("uftp_e2e_per_s", e2e)
        emit("uftp_e2e_sequential_per_s", sequential["messages"] / sequential["seconds"])

        write_bodies(library_path, signed_bodies(agr_key, args.library_messages + 20))
        port = free_port()
        service = library_endpoint(port, agr_key)
        service.run_in_thread()
        try:
            lib = run_client(f"http://127.0.0.1:{port}{PATH}", library_path, args.concurrency, 20)
        finally:
            service.stop()
        emit("shapeshifter_endpoint_per_s", lib["messages"] / lib["seconds"])
        emit("uftp_e2e_vs_shapeshifter_ratio", ratio(e2e, library))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        client_main(sys.argv[2:])
    else:
        main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(0)  # the library's uvicorn/executor threads must not hold the interpreter open
