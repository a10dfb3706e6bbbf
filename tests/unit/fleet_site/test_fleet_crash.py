"""A site killed (SIGKILL) between the command's commit and the stream ack: after the restart
the redelivered command has no second effect, and its Ack goes out once under its one id."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.fleet import protocol
from agent.fleet.apply import ack_id
from agent.fleet.link import AFTER_COMMAND_COMMIT
from agent.runtime import failpoints

SITE = "site-crash"


def run_child(
    database: Path, command_file: Path, failpoint: str | None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != failpoints.ENV}
    if failpoint:
        env[failpoints.ENV] = failpoint
    return subprocess.run(
        [sys.executable, "-m", "tests.support.fleet_link_child", str(database), str(command_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def rows(database: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(database) as conn:
        return [tuple(r) for r in conn.execute(sql)]


def test_kill_between_commit_and_stream_ack_then_redelivery(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    start = datetime.fromtimestamp(int(now.timestamp()) // 900 * 900, UTC)
    command = protocol.Command(
        id="centre-cmd-1",
        site=SITE,
        sent_at=now,
        order_id="order-7",
        seq=1,
        valid_until=now + timedelta(hours=1),
        congestion_point="ean.871685900012636543",
        start=start,
        cap_w=[2000.0, None],
    )
    command_file = tmp_path / "command.json"
    command_file.write_bytes(protocol.encode(command))
    database = tmp_path / "site.sqlite"

    crashed = run_child(database, command_file, AFTER_COMMAND_COMMIT)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert "changed" not in crashed.stdout
    # Committed whole: in force, recorded, its Ack waiting in the outbox.
    assert rows(database, "SELECT order_id, seq FROM fleet_commands") == [("order-7", 1)]
    assert rows(database, "SELECT order_id, seq, outcome FROM fleet_command_log") == [
        ("order-7", 1, "applied")
    ]
    ack = ack_id(SITE, "order-7", 1)
    assert rows(database, "SELECT id, published_at FROM fleet_outbox") == [(ack, None)]
    [(applied_at,)] = rows(database, "SELECT applied_at FROM fleet_commands")

    # The stream never saw the ack: the restarted site gets the command again.
    restarted = run_child(database, command_file, None)
    assert restarted.returncode == 0, restarted.stderr
    lines = restarted.stdout.split("\n")
    assert "changed" not in lines  # no second effect
    assert [line for line in lines if line.startswith("published")] == [f"published {ack}"]
    assert rows(database, "SELECT order_id, seq, applied_at FROM fleet_commands") == [
        ("order-7", 1, applied_at)
    ]
    assert len(rows(database, "SELECT * FROM fleet_command_log")) == 1
    [(published_at,)] = rows(database, "SELECT published_at FROM fleet_outbox")
    assert published_at is not None
