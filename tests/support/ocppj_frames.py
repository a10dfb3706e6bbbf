"""Bad OCPP-J frames and the CALLERROR each must get: one table for the endpoint in memory
(tests/unit/ocpp_bridge/test_ocppj.py) and the listener over a socket (test_bad_input.py)."""

from __future__ import annotations

import json
from typing import Any

STATUS_WITH_TEXT_CONNECTOR = {"connectorId": "one", "errorCode": "NoError", "status": "Available"}

# (subprotocol, frame, the first three fields of the CALLERROR it gets)
BAD_FRAMES: list[tuple[str, str, list[Any]]] = [
    ("ocpp1.6", "this is not json", [4, "-1", "FormatViolation"]),
    ("ocpp2.0.1", "this is not json", [4, "-1", "RpcFrameworkError"]),
    ("ocpp2.0.1", '{"an": "object"}', [4, "-1", "RpcFrameworkError"]),
    ("ocpp2.0.1", '[7, "m1", "Heartbeat", {}]', [4, "m1", "MessageTypeNotSupported"]),
    ("ocpp1.6", '[7, "m1", "Heartbeat", {}]', [4, "m1", "ProtocolError"]),
    ("ocpp1.6", '[2, "m2", "Heartbeat"]', [4, "m2", "ProtocolError"]),
    ("ocpp1.6", '[2, "m3", "Heartbeat", {"extra": 1}]', [4, "m3", "FormatViolation"]),
    (
        "ocpp2.0.1",
        '[2, "m4", "BootNotification", {"reason": "PowerUp"}]',
        [4, "m4", "ProtocolError"],
    ),
    (
        "ocpp1.6",
        json.dumps([2, "m5", "StatusNotification", STATUS_WITH_TEXT_CONNECTOR]),
        [4, "m5", "TypeConstraintViolation"],
    ),
    # OCPP-J: NotImplemented = action not known, NotSupported = known but not handled.
    ("ocpp1.6", '[2, "m6", "FooBar", {}]', [4, "m6", "NotImplemented"]),
    ("ocpp2.0.1", '[2, "m6", "StartTransaction", {}]', [4, "m6", "NotImplemented"]),
    ("ocpp1.6", '[2, "m7", "RemoteStartTransaction", {"idTag": "x"}]', [4, "m7", "NotSupported"]),
    ("ocpp2.0.1", '[2, "m7", "RequestStartTransaction", {}]', [4, "m7", "NotSupported"]),
    ("ocpp2.0.1", '[2, "m8", "TransactionEvent", {}]', [4, "m8", "ProtocolError"]),
]
