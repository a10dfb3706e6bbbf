"""A real Mosquitto broker process on a free loopback port, restartable on the same port."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port, wait_for_port

MISSING = (
    "the mosquitto broker is not installed: `apt-get install mosquitto` (make test does this "
    "when run as root), or put mosquitto on PATH"
)


def find_mosquitto() -> str | None:
    for candidate in (
        shutil.which("mosquitto"),
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass
class MosquittoBroker:
    binary: str
    workdir: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    # Optional password file line "user:password" pairs; empty means anonymous access.
    users: dict[str, str] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def _write_config(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        lines = [
            # Run as ourselves: as root mosquitto would switch to the "mosquitto" user, which
            # cannot read files in the test's private temporary directory.
            f"user {getpass.getuser()}",
            f"listener {self.port} {self.host}",
            "persistence false",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if self.users:
            pwfile = self.workdir / "passwords"
            pwfile.write_text("".join(f"{u}:{p}\n" for u, p in self.users.items()))
            pwfile.chmod(0o600)
            subprocess.run(
                [
                    shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd",
                    "-U",
                    str(pwfile),
                ],
                check=True,
                capture_output=True,
            )
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> None:
        conf = self._write_config()
        stderr_path = self.workdir / "mosquitto.stderr"
        with stderr_path.open("ab") as stderr:
            self.process = subprocess.Popen(
                [self.binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=stderr
            )
        try:
            wait_for_port(self.host, self.port, timeout_s=10)
        except TimeoutError:
            self.stop()
            log = self.log_path.read_text() if self.log_path.exists() else ""
            raise RuntimeError(
                f"mosquitto did not start on port {self.port}:\n{stderr_path.read_text()}\n{log}"
            ) from None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port: what a client sees as a broker restart."""
        self.stop()
        self.start()
