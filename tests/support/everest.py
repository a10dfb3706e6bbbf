"""Real EVerest libocpp chargers (OCPP 1.6 and 2.0.1) against a real `flexbridge run` process.

The chargers are the EVerest libocpp v0.31.1 stations of the `everest-libocpp` peer folder,
built by its `build.sh` (`make test` runs it) under ``EVEREST_PEER_DIR`` and started one per
call by its `run-charger.sh`, each in its own instance folder (console FIFO, ``charger.log``,
the charger's own ``/tmp`` with its database and message log).

What a test uses:

- `find_peer()` -> `EverestPeer` or None, `MISSING` says why; the ``everest`` fixture in
  ``tests/integration/everest/conftest.py`` skips locally and fails under ``CI=true``.
- `AgentSite`: writes a site configuration for N chargers (with ``upstream_url``: relayed to
  that CSMS, local-controller mode), runs ``flexbridge run`` as a child process, `kill9()`s
  and `restart()`s it on the same port, reads its JSON API.
- `Station`: one charger. `await start()` / `await start_all([...])` (asyncio subprocesses, so
  an event loop that serves OCPP in this process is never blocked: libocpp gives up on a
  websocket upgrade that is not answered in time and backs off), `send("power 7000")`,
  `await composite()` (the station's own composite schedule, in A), `frames()` (every OCPP
  frame the station sent or received, parsed), `await wait_for_frame(...)`, `kill()`,
  `await stop()`, `await restart()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from tests.support.ports import free_port, wait_for_port
from tests.support.processes import AgentProcess
from uftp import keys

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BUILD_DIR = Path("/var/cache/flexbridge/everest-libocpp")
PEER_SUBDIR = Path("shared") / "peers" / "everest-libocpp"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
V16 = "1.6"
V201 = "2.0.1"
# OCPP 2.0.1 BasicAuthPassword wants 16..40 characters, 1.6 AuthorizationKey at least 8.
PASSWORD = "everest-site-password-0123"

MISSING = (
    "the EVerest libocpp chargers are not built: run `make test` as root (it runs "
    "shared/peers/everest-libocpp/build.sh, which apt-installs its build dependencies), or "
    "`bash <repo>/../shared/peers/everest-libocpp/build.sh` once, with EVEREST_PEER_DIR set "
    "if the build is not in /var/cache/flexbridge/everest-libocpp"
)


def _git_common_root() -> Path | None:
    """The main checkout when this one is a `git worktree` (its sibling `shared/` counts)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--git-common-dir"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    common = (ROOT / out).resolve()
    return common.parent if common.name == ".git" else None


def peer_source_dirs() -> list[Path]:
    """Where `run-charger.sh` may be: $EVEREST_PEER_SOURCE, then `shared/` beside the clone."""
    candidates: list[Path] = []
    if os.environ.get("EVEREST_PEER_SOURCE"):
        candidates.append(Path(os.environ["EVEREST_PEER_SOURCE"]))
    candidates.append(ROOT.parent / PEER_SUBDIR)
    main = _git_common_root()
    if main is not None:
        candidates.append(main.parent / PEER_SUBDIR)
    return candidates


@dataclass(frozen=True)
class EverestPeer:
    source: Path  # holds run-charger.sh and build.sh (may be read-only)
    build: Path  # EVEREST_PEER_DIR: run/charge_point_mv, run/charge_point_201

    @property
    def run_charger(self) -> Path:
        return self.source / "run-charger.sh"

    def env(self) -> dict[str, str]:
        return {**os.environ, "EVEREST_PEER_DIR": str(self.build)}


def find_peer() -> EverestPeer | None:
    build = Path(os.environ.get("EVEREST_PEER_DIR") or DEFAULT_BUILD_DIR)
    binaries = [build / "run" / "charge_point_mv", build / "run" / "charge_point_201"]
    if not all(os.access(b, os.X_OK) for b in binaries):
        return None
    for source in peer_source_dirs():
        if (source / "run-charger.sh").is_file():
            return EverestPeer(source.resolve(), build)
    return None


# --- frames ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One OCPP-J message as the station logged it; `sent` is True for station -> CSMS."""

    sent: bool
    message: list[Any]
    offset: int  # position of its line in charger.log (for "after this point" queries)

    @property
    def kind(self) -> int:
        return int(self.message[0])

    @property
    def unique_id(self) -> str:
        return str(self.message[1])

    @property
    def action(self) -> str | None:
        return str(self.message[2]) if self.kind == 2 else None

    @property
    def payload(self) -> dict[str, Any]:
        body = self.message[3] if self.kind == 2 else self.message[2]
        return body if isinstance(body, dict) else {}


# 1.6: libocpp's "console_detailed" log prints each frame as `... ChargePoint: [2,"id",...]`
# (sent) / `... CentralSystem: [3,"id",{...}]` (received), possibly pretty-printed over
# several lines; the 2.0.1 harness prints `FRAME > [...]` / `FRAME < [...]` on one line.
_FRAME_START = re.compile(r"(FRAME >|FRAME <|ChargePoint:|CentralSystem:)\s*(\[.*)$")


def parse_frames(text: str) -> list[Frame]:
    frames: list[Frame] = []
    decoder = json.JSONDecoder()
    position = 0
    lines = text.splitlines(keepends=True)
    offsets: list[int] = []
    for line in lines:
        offsets.append(position)
        position += len(line)
    index = 0
    while index < len(lines):
        found = _FRAME_START.search(lines[index].rstrip("\n"))
        if found is None:
            index += 1
            continue
        sent = found.group(1) in ("FRAME >", "ChargePoint:")
        # A pretty-printed frame continues over the following lines until the JSON closes: at
        # a line that is a bare "]" (the frame's own bracket; nested ones are indented). A 1.6
        # StopTransaction carries every sample of its transaction: thousands of lines.
        chunk = found.group(2)
        end = index
        message: Any = None
        while True:
            try:
                message, _ = decoder.raw_decode(chunk)
                break
            except ValueError:
                end += 1
                while end < len(lines) and lines[end].rstrip() != "]":
                    end += 1
                if end >= len(lines):
                    message = None
                    break
                chunk = found.group(2) + "".join(lines[index + 1 : end + 1])
        if isinstance(message, list) and message and isinstance(message[0], int):
            frames.append(Frame(sent, message, offsets[index]))
            index = end + 1
        else:
            index += 1
    return frames


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


# --- one station -----------------------------------------------------------------------------


class StationError(RuntimeError):
    pass


@dataclass
class Station:
    """One libocpp charger in its own instance folder (state kept across restarts)."""

    peer: EverestPeer
    charger_id: str
    version: str  # V16 or V201
    directory: Path
    csms_url: str  # ws://127.0.0.1:PORT/ocpp (no id: libocpp appends it)
    password: str | None = PASSWORD
    evses: int = 1
    settings: Sequence[str] = ()  # --set overrides (1.6 Section.Key=JSON, 2.0.1 Comp.Var=V)
    started: int = 0

    # -- process ----------------------------------------------------------------------------

    def _args(self, *, fresh: bool, wait_s: float) -> list[str]:
        args = [
            "bash",
            str(self.peer.run_charger),
            "--ocpp",
            self.version,
            "--id",
            self.charger_id,
            "--csms",
            self.csms_url if self.version == V201 else self.csms_url.rstrip("/") + "/",
            "--dir",
            str(self.directory),
        ]
        if self.password is not None:
            args += ["--sp", "1", "--password", self.password]
        if self.version == V201 and self.evses != 1:
            args += ["--evses", str(self.evses)]
        if self.version == V201:
            args += ["--set", "SampledDataCtrlr.TxUpdatedInterval=5"]
        else:
            args += ["--set", "Core.MeterValueSampleInterval=5"]
        for setting in self.settings:
            args += ["--set", setting]
        if fresh:
            args.append("--fresh")
        if wait_s > 0:
            args += ["--wait", str(max(1, round(wait_s)))]
        return args

    async def start(self, *, fresh: bool = False, wait_s: float = 60.0) -> None:
        """Start it (in the background) and, with `wait_s`, return once it is connected.

        The first start of a Station wipes its folder; later ones keep the charger's state
        (database, queued messages, profiles) unless `fresh`. An asyncio subprocess: waiting
        never blocks an event loop that serves OCPP in this process.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            self._forget_dead_pid()
            since = self.mark()
            proc = await asyncio.create_subprocess_exec(
                *self._args(fresh=fresh or self.started == 0, wait_s=wait_s),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=self.peer.env(),
            )
            out, _ = await proc.communicate()
            self.started += 1
            if proc.returncode != 0:
                raise StationError(
                    f"{self.charger_id} (OCPP {self.version}) did not start/connect "
                    f"(exit {proc.returncode}): {out.decode(errors='replace')[-2000:]}\n"
                    f"--- charger.log tail ---\n{self.log()[-3000:]}"
                )
            if wait_s <= 0 or attempt == 2 or not await self._lost_its_boot_answer(since):
                return
            # libocpp 1.6 sometimes takes a CSMS answer that arrives within a millisecond of
            # connecting for one "in disconnected state" and drops it: when that answer is the
            # BootNotification's, the charger never boots (it answers nothing, sends nothing)
            # until it is restarted. A real charger on a real network does not meet a CSMS that
            # fast; restarting it here is what its operator would do.
            await self.stop()

    async def _lost_its_boot_answer(self, since: int, within_s: float = 2.0) -> bool:
        """Whether the line right after the CSMS's answer to this start's BootNotification
        says libocpp dropped it."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            text = self.log()[since:]
            call = re.search(r'\[\s*2,\s*"([^"]+)",\s*"BootNotification"', text)
            if call is not None:
                answer = re.search(r'\[\s*3,\s*"' + re.escape(call.group(1)) + r'"', text)
                if answer is not None:
                    after = text[answer.end() :]
                    closing = after.find("\n]")
                    if closing != -1:
                        following = after[closing + 2 :].lstrip("\n").split("\n", 1)[0]
                        return "Received a message in disconnected state" in following
            await asyncio.sleep(0.1)
        return False

    @property
    def pid(self) -> int | None:
        try:
            return int((self.directory / "pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        pid = self.pid
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # A zombie is not alive: read its state.
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            return stat.rpartition(")")[2].split()[0] != "Z"
        return True

    def kill(self) -> None:
        """SIGKILL: the charger dies without a word (its state stays in its folder)."""
        pid = self.pid
        if pid is not None and self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            # A process blocked in the kernel (a write on a busy disk) dies only when it
            # returns from there: seconds on a loaded CI machine.
            deadline = time.monotonic() + 60.0
            while self.alive():
                if time.monotonic() > deadline:
                    raise StationError(f"{self.charger_id} (pid {pid}) survived SIGKILL for 60 s")
                time.sleep(0.05)
        self._forget_dead_pid()

    def _forget_dead_pid(self) -> None:
        """Drop the pid file of a charger that is dead or a zombie not reaped yet (its parent,
        run-charger.sh, exited long ago): run-charger.sh would take it for a running one."""
        if self.pid is not None and not self.alive():
            (self.directory / "pid").unlink(missing_ok=True)

    async def stop(self) -> None:
        """`end` on the console, then SIGTERM/SIGKILL (run-charger.sh --stop)."""
        if not self.alive():
            return
        proc = await asyncio.create_subprocess_exec(
            "bash",
            str(self.peer.run_charger),
            "--dir",
            str(self.directory),
            "--stop",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=self.peer.env(),
        )
        await proc.wait()

    async def restart(self, *, wait_s: float = 60.0) -> None:
        """Process restart with its state kept (a charger that reboots: new BootNotification)."""
        await self.stop()
        await self.start(wait_s=wait_s)

    # -- console ----------------------------------------------------------------------------

    def send(self, *commands: str) -> None:
        """Console commands, one per line; raises if no charger reads the FIFO."""
        data = "".join(f"{c}\n" for c in commands).encode()
        try:
            fd = os.open(self.directory / "console", os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                raise StationError(f"{self.charger_id} is not running") from exc
            raise
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    # -- output -----------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.directory / "charger.log"

    def log(self) -> str:
        try:
            return strip_ansi(self.log_path.read_text(errors="replace"))
        except FileNotFoundError:
            return ""

    def mark(self) -> int:
        """A position in the (ANSI-stripped) log: pass it as `since` to look only after it."""
        return len(self.log())

    async def wait_for_log(
        self, pattern: str, *, since: int = 0, timeout_s: float = 60.0
    ) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while True:
            found = regex.search(self.log(), since)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.charger_id}: {pattern!r} not in charger.log within {timeout_s} s; "
                    f"tail:\n{self.log()[-3000:]}"
                )
            await asyncio.sleep(0.2)

    def frames(self, since: int = 0) -> list[Frame]:
        return [f for f in parse_frames(self.log()) if f.offset >= since]

    def calls(self, action: str, *, sent: bool | None = None, since: int = 0) -> list[Frame]:
        """CALLs of `action` (sent=True: by the station, False: by the CSMS, None: both)."""
        return [
            f for f in self.frames(since) if f.action == action and (sent is None or f.sent is sent)
        ]

    def answer_to(self, call: Frame) -> Frame | None:
        """The CALLRESULT / CALLERROR that answered `call`."""
        for frame in self.frames(call.offset):
            if frame.kind in (3, 4) and frame.unique_id == call.unique_id:
                return frame
        return None

    async def wait_for_frame(
        self,
        predicate: Callable[[Frame], bool],
        *,
        since: int = 0,
        timeout_s: float = 60.0,
        what: str = "",
    ) -> Frame:
        deadline = time.monotonic() + timeout_s
        while True:
            for frame in self.frames(since):
                if predicate(frame):
                    return frame
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.charger_id}: no frame {what} within {timeout_s} s; tail:\n"
                    f"{self.log()[-3000:]}"
                )
            await asyncio.sleep(0.2)

    async def wait_for_call(
        self, action: str, *, sent: bool, since: int = 0, timeout_s: float = 60.0
    ) -> Frame:
        return await self.wait_for_frame(
            lambda f: f.action == action and f.sent is sent,
            since=since,
            timeout_s=timeout_s,
            what=f"{action} ({'from' if sent else 'to'} the station)",
        )

    async def composite(self, seconds: int = 3600, timeout_s: float = 20.0) -> dict[int, Any]:
        """The station's own composite schedule per connector (1.6) / EVSE (2.0.1), in A.

        Keys: connector or EVSE id (0 = the whole station); values: libocpp's ChargingSchedule
        JSON (``chargingSchedulePeriod`` with ``limit`` in A), or None when it has none.
        """
        since = self.mark()
        self.send(f"composite {seconds}")
        label = "connector" if self.version == V16 else "evse"
        expected = 2 if self.version == V16 else self.evses + 1
        pattern = re.compile(rf"HARNESS composite {label} (\d+) \((\d+) s, A\): (.*)$", re.M)
        deadline = time.monotonic() + timeout_s
        while True:
            found: dict[int, Any] = {}
            for match in pattern.finditer(self.log(), since):
                text = match.group(3).strip()
                try:
                    found[int(match.group(1))] = json.loads(text)
                except ValueError:
                    found[int(match.group(1))] = None
            if len(found) >= expected:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.charger_id}: composite output incomplete ({found}); tail:\n"
                    f"{self.log()[-2000:]}"
                )
            await asyncio.sleep(0.2)


def composite_limit_a(schedule: Any, at_s: float = 0.0) -> float | None:
    """The limit (A) a composite schedule gives `at_s` seconds after its start."""
    if not isinstance(schedule, dict):
        return None
    limit: float | None = None
    for period in schedule.get("chargingSchedulePeriod") or ():
        if float(period.get("startPeriod", 0)) <= at_s:
            limit = float(period["limit"])
    return limit


async def start_all(stations: Iterable[Station], *, wait_s: float = 60.0) -> None:
    """Start several stations in parallel (each start waits for its own connection)."""
    await asyncio.gather(*(s.start(wait_s=wait_s) for s in stations))


async def stop_all(stations: Iterable[Station]) -> None:
    await asyncio.gather(*(s.stop() for s in stations), return_exceptions=True)


# --- the agent under test --------------------------------------------------------------------


@dataclass
class AgentSite:
    """`flexbridge run` as a child process with a site of the given chargers on loopback.

    The DSO peer is configured but absent (nothing listens on its endpoint): the site's own
    OCPP behaviour is what is tested here. Security profile 1: every charger logs in with
    `PASSWORD`, as on a real site.
    """

    workdir: Path
    charger_ids: Sequence[str]
    max_current_a: int = 16
    heartbeat_interval_s: int = 60
    ocpp_toml: str = ""  # extra keys of the [ocpp] table, e.g. "session_silence_s = 20"
    extra_toml: str = ""
    # Local-controller mode: the operator's CSMS every charger is relayed to (an [upstream]
    # section, security profile 1 with the charger's own password), and its extra keys.
    upstream_url: str | None = None
    upstream_toml: str = ""
    env: dict[str, str] = field(default_factory=dict)
    ocpp_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: AgentProcess | None = None
    runs: list[AgentProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state = self.workdir / "state"
        self.state.mkdir(exist_ok=True)
        key_file = self.workdir / "agr.key"
        keys.write_signing_key(key_file, SigningKey.generate())
        dso_key = SigningKey.generate()
        chargers = "".join(
            f'[[ocpp.chargers]]\nid = "{cid}"\nmax_current_a = {self.max_current_a}\n'
            f'password = "{PASSWORD}"\n\n'
            for cid in self.charger_ids
        )
        upstream = (
            f'[upstream]\nurl = "{self.upstream_url}"\nsecurity_profile = 1\n{self.upstream_toml}\n'
            if self.upstream_url
            else ""
        )
        self.config_file = self.workdir / "flexbridge.toml"
        self.config_file.write_text(
            f"""
[site]
id = "everest"
timezone = "Europe/Amsterdam"
connection_capacity_w = 200000

[ocpp]
host = "127.0.0.1"
port = {self.ocpp_port}
security_profile = 1
heartbeat_interval_s = {self.heartbeat_interval_s}
response_timeout_s = 15
{self.ocpp_toml}

{chargers}
[uftp]
domain = "agr.flexbridge-test.org"
signing_key_file = "{key_file}"
host = "127.0.0.1"
port = {free_port()}
market_timezone = "Europe/Amsterdam"

[[uftp.peers]]
domain = "dso.flexbridge-test.org"
role = "DSO"
public_keys = ["{keys.public_key_b64(dso_key)}"]
endpoint = "http://127.0.0.1:{free_port()}/shapeshifter/api/v3/message"

[[congestion_points]]
entity_address = "ean.871685900012636543"
dso_domain = "dso.flexbridge-test.org"

[storage]
state_directory = "{self.state}"

[http]
enabled = true
host = "127.0.0.1"
port = {self.http_port}

[logging]
level = "INFO"
format = "logfmt"
{self.extra_toml}
{upstream}
"""
        )

    @property
    def csms_url(self) -> str:
        return f"ws://127.0.0.1:{self.ocpp_port}/ocpp"

    @property
    def database(self) -> Path:
        return self.state / "flexbridge.sqlite"

    def query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        """Read the agent's store (read-only; fine while the agent runs or after it died)."""
        conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            return list(conn.execute(sql, args))
        finally:
            conn.close()

    def start(self) -> AgentProcess:
        process = AgentProcess(["run", "--config", str(self.config_file)], env=self.env)
        self.process = process
        self.runs.append(process)
        process.wait_for("flexbridge running", timeout_s=60)
        wait_for_port("127.0.0.1", self.ocpp_port, timeout_s=10)
        return process

    def kill9(self) -> None:
        if self.process is not None:
            self.process.kill()  # SIGKILL
            self.process.drain()
            self.process = None

    def restart(self) -> AgentProcess:
        """kill -9 and start again on the same port at once (libocpp's backoff stays short)."""
        self.kill9()
        return self.start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.proc.send_signal(signal.SIGTERM)
            try:
                self.process.finish(timeout_s=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None

    def output(self) -> list[str]:
        """Every line every run of the agent printed so far."""
        lines: list[str] = []
        for run in self.runs:
            lines += run.drain()
        return lines

    # -- API --------------------------------------------------------------------------------

    def api(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}",
            method=method,
            data=b"" if method == "POST" else None,
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def charger(self, charger_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.api(f"/api/chargers/{charger_id}")
        return result

    async def eventually(
        self, predicate: Callable[[], Any], *, timeout_s: float = 60.0, what: str = ""
    ) -> Any:
        """Poll `predicate` (it may read the API) until it returns something truthy."""
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while True:
            try:
                result = predicate()
                if result:
                    return result
            except (urllib.error.URLError, ConnectionError, KeyError) as exc:
                last_error = exc
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not met within {timeout_s} s: {what or predicate} (last error: "
                    f"{last_error}); agent output tail:\n" + "\n".join(self.output()[-40:])
                )
            await asyncio.sleep(0.5)


# --- reading what the stations said ------------------------------------------------------------

# Printed by the station each time its websocket is up (first connect and every reconnect).
CONNECTED = {V16: "OCPP client successfully connected", V201: "HARNESS connected"}


def connect_offsets(station: Station) -> list[int]:
    """Log positions of every (re)connect of the station, oldest first."""
    text = station.log()
    return [m.start() for m in re.finditer(re.escape(CONNECTED[station.version]), text)]


def per_connect(station: Station) -> list[list[Frame]]:
    """The station's frames split by connection (frames before the first connect dropped)."""
    offsets = connect_offsets(station)
    frames = station.frames()
    segments: list[list[Frame]] = []
    for k, start in enumerate(offsets):
        end = offsets[k + 1] if k + 1 < len(offsets) else None
        segments.append(
            [f for f in frames if f.offset >= start and (end is None or f.offset < end)]
        )
    return segments


def abandoned_connects(station: Station) -> set[int]:
    """Indices (in `per_connect` order) of the connections of a start that `Station.start`
    gave up on: libocpp dropped the BootNotification's answer ("in disconnected state") and
    the harness restarted the charger. Such a connection ends before the CSMS has had a
    reason to send it anything beyond the boot's answer and its first questions."""
    text = station.log()
    offsets = connect_offsets(station)
    stretches = [text[a:b] for a, b in itertools.pairwise(offsets)]
    return {
        k
        for k, stretch in enumerate(stretches)
        if "Received a message in disconnected state" in stretch and "Goodbye" in stretch
    }


def stack_level(frame: Frame) -> int | None:
    """Stack level of a SetChargingProfile CALL (1.6 csChargingProfiles, 2.0.1 chargingProfile)."""
    profile = frame.payload.get("csChargingProfiles") or frame.payload.get("chargingProfile") or {}
    level = profile.get("stackLevel")
    return None if level is None else int(level)


def energy_register_wh(frame: Frame) -> tuple[float, str | None] | None:
    """The Energy.Active.Import.Register (Wh) and its context in a MeterValues, StartTransaction
    or TransactionEvent the station sent; None when the frame carries none."""
    payload = frame.payload
    values: list[Any] = []
    values += payload.get("meterValue") or []
    values += payload.get("transactionData") or []
    found: tuple[float, str | None] | None = None
    for value in values:
        for sampled in value.get("sampledValue") or ():
            if sampled.get("measurand", "Energy.Active.Import.Register") != (
                "Energy.Active.Import.Register"
            ) or sampled.get("phase"):
                continue
            unit = (sampled.get("unitOfMeasure") or {}).get("unit") or sampled.get("unit") or "Wh"
            number = float(sampled["value"])
            found = (number * 1000.0 if unit == "kWh" else number, sampled.get("context"))
    return found


def transaction_id_of(frame: Frame) -> str | None:
    payload = frame.payload
    if "transactionId" in payload:
        return str(payload["transactionId"])
    info = payload.get("transactionInfo") or {}
    return None if "transactionId" not in info else str(info["transactionId"])
