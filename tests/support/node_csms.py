"""The independent CSMS in tests/peers/csms.js (npm ocpp-rpc RPCServer), as a Node process."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from tests.support.node_peer import PEERS

SCRIPT = PEERS / "csms.js"


@dataclass
class NodeCsms:
    """A running csms.js; stdout is one JSON object per line (see the script's header)."""

    process: asyncio.subprocess.Process
    port: int = 0
    lines: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    _refs: int = 0
    _reader: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def start(cls, node: str, port: int = 0) -> NodeCsms:
        process = await asyncio.create_subprocess_exec(
            node,
            str(SCRIPT),
            str(port),
            cwd=PEERS,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        csms = cls(process)
        csms._reader = asyncio.get_running_loop().create_task(csms._read())
        listening = await csms.wait_for(lambda line: line.get("event") == "listening")
        csms.port = listening["port"]
        return csms

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while data := await self.process.stdout.readline():
            text = data.decode().rstrip("\n")
            self.raw.append(text)
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = {"event": "stderr", "text": text}
            self.lines.append(parsed if isinstance(parsed, dict) else {"event": "other"})
            self._changed.set()
        self._changed.set()

    async def wait_for(self, predicate: Any, timeout_s: float = 20.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            for line in self.lines:
                if predicate(line):
                    return line
            remaining = deadline - loop.time()
            if remaining <= 0 or (self._reader is not None and self._reader.done()):
                raise AssertionError("csms.js never said it; output:\n" + "\n".join(self.raw))
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                continue

    def frames(self, identity: str) -> list[list[Any]]:
        """Every frame the CSMS received from `identity`, in order."""
        return [
            line["message"]
            for line in self.lines
            if line.get("event") == "frame" and line.get("identity") == identity
        ]

    def calls(self, identity: str) -> list[tuple[str, dict[str, Any]]]:
        return [(m[2], m[3]) for m in self.frames(identity) if m[0] == 2]

    async def wait_for_call(self, identity: str, action: str, count: int = 1) -> None:
        def seen(_: dict[str, Any]) -> bool:
            return sum(1 for a, _p in self.calls(identity) if a == action) >= count

        await self.wait_for(seen)

    async def call(self, identity: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """A CSMS CALL to the station; the result line (or call-error line)."""
        self._refs += 1
        ref = self._refs
        await self._send(
            {"cmd": "call", "ref": ref, "identity": identity, "method": method, "params": params}
        )
        return await self.wait_for(
            lambda line: line.get("ref") == ref and line.get("event") in ("result", "call-error")
        )

    async def _send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        await self.process.stdin.drain()

    def complaints(self) -> list[str]:
        return [r for r in self.raw if "STRICT-FAIL" in r or "BADMESSAGE" in r]

    async def stop(self) -> None:
        if self.process.returncode is None:
            try:
                await self._send({"cmd": "stop"})
                await asyncio.wait_for(self.process.wait(), 10)
            except (TimeoutError, ConnectionError):
                self.process.kill()
                await self.process.wait()
        if self._reader is not None:
            await self._reader

    async def kill(self) -> None:
        """An outage: the process dies without closing its sockets cleanly."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            await self._reader
