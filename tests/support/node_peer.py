"""The independent charger in tests/peers (npm ocpp-rpc), run as a real Node process."""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PEERS = Path(__file__).resolve().parents[1] / "peers"
SCRIPT = PEERS / "charger.js"
MISSING = (
    "the Node.js test peer is not available: install nodejs and npm (`apt-get install nodejs "
    "npm`) and run `make peers` (npm ci in tests/peers); make test does both as root"
)


def find_node() -> str | None:
    node = shutil.which("node")
    if node is None or not (PEERS / "node_modules" / "ocpp-rpc" / "package.json").is_file():
        return None
    return node


@dataclass
class NodeCharger:
    """A running charger.js; its stdout is one JSON object per line."""

    process: asyncio.subprocess.Process
    lines: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)

    @classmethod
    async def start(
        cls, node: str, protocol: str, endpoint: str, identity: str, password: str
    ) -> NodeCharger:
        process = await asyncio.create_subprocess_exec(
            node,
            str(SCRIPT),
            protocol,
            endpoint,
            identity,
            password,
            cwd=PEERS,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(process)

    async def _read_line(self, timeout_s: float) -> dict[str, Any] | None:
        assert self.process.stdout is not None
        data = await asyncio.wait_for(self.process.stdout.readline(), timeout_s)
        if not data:
            return None
        text = data.decode().rstrip("\n")
        self.raw.append(text)
        try:
            parsed: dict[str, Any] = json.loads(text)
        except ValueError:
            parsed = {"event": "stderr", "text": text}
        self.lines.append(parsed)
        return parsed

    async def wait_for(self, event: str, timeout_s: float = 20.0, **match: Any) -> dict[str, Any]:
        for line in self.lines:
            if line.get("event") == event and all(line.get(k) == v for k, v in match.items()):
                return line
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (remaining := deadline - loop.time()) > 0:
            try:
                line = await self._read_line(remaining)
            except TimeoutError:
                break
            if line is None:
                break
            if line.get("event") == event and all(line.get(k) == v for k, v in match.items()):
                return line
        raise AssertionError(
            f"charger.js never said {event!r} {match}; output:\n" + "\n".join(self.raw)
        )

    def calls(self, method: str) -> list[dict[str, Any]]:
        return [
            line["params"]
            for line in self.lines
            if line.get("event") == "call" and line.get("method") == method
        ]

    async def wait_for_call(
        self, method: str, predicate: Any = lambda params: True, timeout_s: float = 20.0
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            for params in self.calls(method):
                if predicate(params):
                    return params
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no {method} call seen; output:\n" + "\n".join(self.raw))
            try:
                if await self._read_line(remaining) is None:
                    raise AssertionError(
                        f"charger.js exited before {method}:\n" + "\n".join(self.raw)
                    )
            except TimeoutError:
                continue

    async def stop(self, timeout_s: float = 20.0) -> int:
        assert self.process.stdin is not None
        self.process.stdin.write(b"stop\n")
        await self.process.stdin.drain()
        await self.wait_for("done", timeout_s)
        while await self._read_line(timeout_s) is not None:
            pass
        return await asyncio.wait_for(self.process.wait(), timeout_s)

    def complaints(self) -> list[str]:
        return [r for r in self.raw if "STRICT-FAIL" in r or "BADMESSAGE" in r]

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
