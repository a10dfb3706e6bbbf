"""The AGR's check of a FlexSettlement item against its own metering (pure).

A DSO settles an order with the ActualPower it measured per ISP; the AGR accepts what agrees
with its own meters and disputes the rest, naming the ISPs, so a difference in money can be
traced to a difference in measurement.
"""

from __future__ import annotations

from collections.abc import Mapping

from uftp.models import AcceptedDisputed, FlexOrderSettlement, FlexOrderSettlementStatus

SHOWN = 5  # ISPs named in a dispute reason; the rest are counted


def dispute_by_metering(
    item: FlexOrderSettlement,
    status: FlexOrderSettlementStatus,
    measured_w: Mapping[int, float],
    tolerance_w: float,
    tolerance_fraction: float,
) -> FlexOrderSettlementStatus:
    """`status`, disputed where the item's ActualPower differs from `measured_w` (our
    average power per ISP index of the item's period, 0 W where nothing was metered) by more
    than both the absolute and the relative tolerance. An ISP index the period does not have
    is not judged here: the assessment of the message rejects it."""
    differing: list[str] = []
    for isp in item.isps:
        for index in range(isp.start, isp.start + isp.duration):
            if index not in measured_w:
                continue
            ours = measured_w[index]
            gap = abs(isp.actual_power - ours)
            if gap > tolerance_w and gap > tolerance_fraction * max(abs(ours), 1.0):
                differing.append(f"ISP {index}: {isp.actual_power} W, we measured {ours:.0f} W")
    if not differing:
        return status
    reason = "ActualPower differs from the AGR's metering: " + "; ".join(differing[:SHOWN])
    if len(differing) > SHOWN:
        reason += f"; and {len(differing) - SHOWN} more ISP(s)"
    if status.dispute_reason:
        reason = f"{status.dispute_reason}; {reason}"
    return FlexOrderSettlementStatus(
        order_reference=status.order_reference,
        disposition=AcceptedDisputed.DISPUTED,
        dispute_reason=reason,
    )
