"""Reading frames from an EVerest station's log (tests/support/everest.py), as the real-charger
tests do: a 1.6 StopTransaction of a long transaction spans thousands of pretty-printed lines."""

from __future__ import annotations

import json

from tests.support.everest import Station, parse_frames


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


BOOT_ANSWER_DROPPED = """\
2026-12-02 08:12:24.177295 charge_point [INFO] :: ChargePoint: [
  2,
  "19225ce5",
  "BootNotification",
  {
    "chargePointModel": "Yeti"
  }
]
2026-12-02 08:12:24.178126 charge_point [INFO] :: CentralSystem: [
  3,
  "19225ce5",
  {
    "status": "Accepted"
  }
]
2026-12-02 08:12:24.178162 charge_point [ERRO] message_callback :: Received a message in \
disconnected state, this cannot be correct
"""


class _LoggedStation(Station):
    def __init__(self, text: str) -> None:  # a log, nothing to run
        self._text = text

    def log(self) -> str:
        return self._text


async def test_a_dropped_boot_answer_is_told_apart_from_a_dropped_later_call() -> None:
    assert await _LoggedStation(BOOT_ANSWER_DROPPED)._lost_its_boot_answer(0, 0.2)
    later = BOOT_ANSWER_DROPPED.replace(
        "2026-12-02 08:12:24.178162 charge_point [ERRO]",
        '2026-12-02 08:12:24.178 charge_point [INFO] :: CentralSystem: [\n  2,\n  "fb-1",\n'
        '  "GetConfiguration",\n  {}\n]\n2026-12-02 08:12:24.178162 charge_point [ERRO]',
    )
    assert not await _LoggedStation(later)._lost_its_boot_answer(0, 0.2)
    assert not await _LoggedStation("")._lost_its_boot_answer(0, 0.2)
