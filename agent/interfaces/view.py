"""What the operator interfaces may see of the running agent.

The status page, the API, Prometheus and MQTT read the agent's components; they must not reach
for the composition root (`agent.app`), which builds them and would then import itself through
them. `AgentView` names the parts they read, all read-only: `agent.app.Agent` satisfies it, and
a test may hand over anything of the same shape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from agent.control.dispatch import Dispatcher
    from agent.fleet.link import SiteLink
    from agent.runtime.clock import Clock
    from agent.runtime.config import Config
    from agent.runtime.faults import Faults
    from agent.site.forecasting import SiteForecaster
    from agent.site.model import Site
    from agent.storage.db import Database
    from agent.trading.prognosis import PrognosisService
    from agent.trading.trader import Trader
    from ocpp_bridge import CentralSystem


class AgentView(Protocol):
    """The running agent as the operator interfaces see it."""

    @property
    def config(self) -> Config: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def db(self) -> Database: ...
    @property
    def site(self) -> Site: ...
    @property
    def bridge(self) -> CentralSystem: ...
    @property
    def forecaster(self) -> SiteForecaster: ...
    # None on a site of a fleet (its centre trades).
    @property
    def prognosis(self) -> PrognosisService | None: ...
    @property
    def trader(self) -> Trader | None: ...
    @property
    def dispatcher(self) -> Dispatcher: ...
    @property
    def faults(self) -> Faults: ...
    # Only on a site of a fleet: its link to the centre.
    @property
    def link(self) -> SiteLink | None: ...
