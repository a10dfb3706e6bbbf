"""A hostile charger's action names: nothing outside the `ocpp` package's schemas is read.

The websocket and the central system are in-process fakes here; tests/integration/ocpp_bridge/
test_hostile_charger.py sends the same over a real socket to the real listener.
"""

from __future__ import annotations

import json
import os
import random
import tracemalloc
from pathlib import Path

import pytest
from ocpp.messages import MessageType

from ocpp_bridge import schemas
from ocpp_bridge.events import ProtocolVersion
from tests.support.opened_files import outside, recording_opens
from tests.unit.ocpp_bridge.fakes import connection_for

V16 = ProtocolVersion.OCPP16
V201 = ProtocolVersion.OCPP201


def plant_schemas(tmp_path: Path) -> Path:
    """An attacker's schema files where a traversal name would find them."""
    folder = tmp_path / "x"
    folder.mkdir()
    for name in ("evil", "evilRequest", "evilResponse"):
        (folder / f"{name}.json").write_text('{"type": "object"}')
    return folder / "evil"


def traversal_names(version: ProtocolVersion, target: Path) -> list[str]:
    relative = os.path.relpath(target, schemas.schema_dir(version))
    return [
        relative,  # ../../../../../tmp/pytest-.../x/evil
        "../" * 40 + str(target).lstrip("/"),  # more ../ than the tree is deep
        str(target),  # an absolute name replaces the folder in a path join
        "..\\..\\..\\" + target.name,
        "../" * 3 + "v16/schemas/Heartbeat",  # inside the package, but not an action name
    ]


@pytest.mark.parametrize("version", [V16, V201])
async def test_traversal_names_open_nothing_and_get_not_implemented(
    version: ProtocolVersion, tmp_path: Path
) -> None:
    target = plant_schemas(tmp_path)
    connection, socket = connection_for(version)
    names = traversal_names(version, target)
    with recording_opens() as opened:
        for i, name in enumerate(names):
            assert not schemas.has_action(version, name)
            with pytest.raises(schemas.SchemaNotFound):
                schemas.validator_for(version, name, response=False)
            with pytest.raises(schemas.SchemaNotFound):
                schemas.validate(version, name, {}, response=True)
            await connection.route_message(json.dumps([2, f"t{i}", name, {}]))
    assert [path for path in opened if str(tmp_path) in path] == []
    assert outside(opened, [schemas.schema_dir(V16), schemas.schema_dir(V201)]) == []
    assert [frame[:3] for frame in socket.sent] == [
        [MessageType.CallError, f"t{i}", "NotImplemented"] for i in range(len(names))
    ]


def test_schema_files_are_read_only_from_the_package_folder() -> None:
    # Second line of defence: even a caller that skipped the action check gets no file.
    for name in ("../../v201/schemas/HeartbeatRequest", "/etc/passwd", "../" * 30 + "tmp/evil"):
        with pytest.raises(schemas.SchemaNotFound):
            schemas._schema_file(V16, name)


def test_every_known_action_compiles_from_the_package_and_fills_the_cache_exactly() -> None:
    with recording_opens() as opened:
        for version, actions in schemas.ACTIONS.items():
            schemas.warm_up(version, tuple(sorted(actions)))
    assert schemas.cached_validators() == schemas.CACHE_LIMIT
    assert outside(opened, [schemas.schema_dir(V16), schemas.schema_dir(V201)]) == []


def random_names(count: int, seed: int) -> list[str]:
    """Action-like and hostile names: path pieces, control characters, non-ASCII, long."""
    rng = random.Random(seed)
    alphabet = "abcXYZ019_-./\\:%~ \x00\t\u00e9\u4e2d\U0001f600"
    names: list[str] = []
    while len(names) < count:
        kind = rng.random()
        if kind < 0.3:
            name = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        elif kind < 0.6:
            name = "../" * rng.randint(1, 12) + f"tmp/{rng.getrandbits(64):x}"
        elif kind < 0.9:
            name = rng.choice(sorted(schemas.ACTIONS[V201])) + rng.choice(["x", "Request", "/"])
        else:
            name = "A" * rng.randint(100, 5000)
        if not any(schemas.has_action(v, name) for v in (V16, V201)):
            names.append(name)
    return names


@pytest.mark.parametrize("version", [V16, V201])
async def test_ten_thousand_random_names_get_callerror_and_leave_memory_flat(
    version: ProtocolVersion,
) -> None:
    connection, socket = connection_for(version)
    names = random_names(10_000, seed=11)
    # Warm up first: the first CALLERROR and log line allocate once.
    for name in names[:100]:
        await connection.route_message(json.dumps([2, "warm", name, {}]))
    cached = schemas.cached_validators()
    socket.sent.clear()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i, name in enumerate(names):
            await connection.route_message(json.dumps([2, str(i), name, {}]))
            if len(socket.sent) > 100:
                assert all(f[0] == 4 and f[2] == "NotImplemented" for f in socket.sent)
                socket.sent.clear()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert all(f[0] == 4 and f[2] == "NotImplemented" for f in socket.sent)
    assert schemas.cached_validators() == cached <= schemas.CACHE_LIMIT
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    # Caching every name (as before) kept ~1.5 MB per 10,000 names; allow a tenth of that.
    assert growth < 150_000, growth
