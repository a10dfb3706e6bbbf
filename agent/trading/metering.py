"""UFTP Metering: the connection's measured energy per ISP of a finished day, for programmes
that ask for it (`[metering] enabled`), one message per connection per day before settlement.

Two profiles, as the spec recommends: ImportEnergy in kWh per ISP and Power in kW (the ISP's
energy x 60 / ISP minutes). The values are what `agent.site.model` measured from the chargers'
energy registers, summed over every congestion point of the connection; an ISP without a
measurement reports 0 only when the agent was running then (it knows the load was zero), and
is left out otherwise rather than invented.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal

from agent.trading.market import Isp
from uftp.models import Metering, MeteringISP, MeteringProfile, MeteringProfileType, MeteringUnit


def metering_message(
    *,
    sender: str,
    recipient: str,
    ean: str,
    period: date,
    revision: int,
    time_zone: str,
    isps: Sequence[Isp],
    energy_wh: Mapping[int, float],
    measured: Sequence[tuple[datetime, datetime]],
    now: datetime,
) -> Metering | None:
    """The day's Metering message; None when not a single ISP of the day was measured."""
    minutes = int((isps[0].end - isps[0].start).total_seconds() // 60)
    energy: list[MeteringISP] = []
    power: list[MeteringISP] = []
    for isp in isps:
        epoch = int(isp.start.timestamp())
        running = any(start <= isp.start and isp.end <= end for start, end in measured)
        if epoch not in energy_wh and not running:
            continue
        kwh = Decimal(str(round(energy_wh.get(epoch, 0.0) / 1000.0, 3)))
        energy.append(MeteringISP(start=isp.index, value=kwh))
        power.append(
            MeteringISP(start=isp.index, value=(kwh * 60 / minutes).quantize(Decimal("0.001")))
        )
    if not energy:
        return None
    return Metering(
        sender_domain=sender,
        recipient_domain=recipient,
        time_stamp=now,
        conversation_id=str(uuid.uuid4()),
        revision=revision,
        isp_duration=timedelta(minutes=minutes),
        time_zone=time_zone,
        period=period,
        ean=ean,
        profiles=(
            MeteringProfile(
                profile_type=MeteringProfileType.IMPORT_ENERGY,
                unit=MeteringUnit.KWH,
                isps=tuple(energy),
            ),
            MeteringProfile(
                profile_type=MeteringProfileType.POWER, unit=MeteringUnit.KW, isps=tuple(power)
            ),
        ),
    )
