"""Per-connection limits on a misbehaving charger: a message budget and a log that counts."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("ocpp_bridge.connection")


class TokenBucket:
    """Messages per second with a burst: a charger over it gets GenericError, then closed."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class ProblemLog:
    """Logs the first problem of each kind per connection; counts the rest.

    A broken or hostile charger must not flood the log (or the disk of a Raspberry Pi).
    """

    def __init__(self, charger_id: str) -> None:
        self.charger_id = charger_id
        self.counts: dict[str, int] = {}

    def report(self, kind: str, detail: str) -> None:
        seen = self.counts.get(kind, 0)
        self.counts[kind] = seen + 1
        if seen == 0:
            log.warning(
                "charger %s: %s: %s (further ones are counted, not logged)",
                self.charger_id,
                kind,
                detail,
                extra={"charger_id": self.charger_id, "problem": kind},
            )

    def summary(self) -> str:
        return ", ".join(f"{kind} x{count}" for kind, count in sorted(self.counts.items()))
