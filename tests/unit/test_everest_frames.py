"""Reading frames from an EVerest station's log (tests/support/everest.py), as the real-charger
tests do: a 1.6 StopTransaction of a long transaction spans thousands of pretty-printed lines."""

from __future__ import annotations

import json

from tests.support.everest import parse_frames


def test_a_frame_of_thousands_of_lines_is_read_whole() -> None:
    samples = [
        {
            "timestamp": f"2026-12-02T07:{k // 60:02d}:{k % 60:02d}Z",
            "sampledValue": [{"value": str(k)}],
        }
        for k in range(600)
    ]
    stop = [2, "s1", "StopTransaction", {"transactionId": 100, "transactionData": samples}]
    text = (
        "2026-12-02 07:00:00 charge_point [INFO] :: ChargePoint: "
        + json.dumps(stop, indent=2)
        + "\n2026-12-02 07:00:01 charge_point [INFO] :: CentralSystem: "
        + json.dumps([3, "s1", {}], indent=2)
        + "\n"
    )
    assert len(text.splitlines()) > 4000
    frames = parse_frames(text)
    assert [f.message for f in frames] == [stop, [3, "s1", {}]]
    assert [f.sent for f in frames] == [True, False]
