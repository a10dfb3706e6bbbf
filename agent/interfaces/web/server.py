"""The HTTP side for operators: status page, JSON API, /metrics and /health (aiohttp).

Reading is open to whoever reaches the port, which is loopback unless `http.host` says
otherwise (the page shows operational detail; publish it through a reverse proxy with its own
authentication). Anything that changes state (a dispatch round now, a prognosis resend, revoking
an offer) needs ``Authorization: Bearer <http.token>``; with no token configured those
endpoints answer 403, so a forgotten token never leaves them open. A bearer header cannot be
sent by a foreign web page the operator happens to visit (no cookies are involved), which is
what keeps these POSTs safe from cross-site requests without a CSRF scheme.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from datetime import date
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agent.interfaces.metrics import AgentMetrics
from agent.interfaces.status import LiveStatus, day_chart, fleet_link, trade_snapshot
from agent.interfaces.web.page import chart_svg, render_status_page
from agent.storage import records, trades
from forecaster.worker import WorkerError

if TYPE_CHECKING:
    from agent.interfaces.view import AgentView

log = logging.getLogger(__name__)

HealthCheck = Callable[[], Awaitable[list[str]]]
"""Returns the problems found (empty: healthy)."""

DISPATCH_WAIT_S = 30.0
# The classic text format generate_latest() writes; every Prometheus version parses it
# (prometheus-client >= 0.22 names 1.0.0 "latest", which Prometheus 2.x does not know).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _error(status: int, message: str, **headers: str) -> web.HTTPException:
    exc_class: type[web.HTTPException] = {
        400: web.HTTPBadRequest,
        401: web.HTTPUnauthorized,
        403: web.HTTPForbidden,
        404: web.HTTPNotFound,
        409: web.HTTPConflict,
        503: web.HTTPServiceUnavailable,
        504: web.HTTPGatewayTimeout,
    }[status]
    return exc_class(
        text=web.json_response({"error": message}).text,
        content_type="application/json",
        headers=headers or None,
    )


class StatusServer:
    """Service component: the operator's HTTP endpoint."""

    name = "http"

    def __init__(
        self,
        agent: AgentView,
        metrics: AgentMetrics,
        health: HealthCheck,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        token: str | None = None,
    ) -> None:
        self.agent = agent
        self.metrics = metrics
        self.health = health
        self.host = host
        self.requested_port = port
        self.token = token or None
        self.status = LiveStatus(agent)
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def application(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.add_routes(
            [
                web.get("/", self.page),
                web.get("/health", self.get_health),
                web.get("/metrics", self.get_metrics),
                web.get("/chart.svg", self.get_chart_svg),
                web.get("/api/status", self.get_status),
                web.get("/api/site", self.get_site),
                web.get("/api/chargers", self.get_chargers),
                web.get("/api/chargers/{charger_id}", self.get_charger),
                web.get("/api/sessions", self.get_sessions),
                web.get("/api/trade", self.get_trade),
                web.get("/api/chart", self.get_chart),
                web.post("/api/dispatch", self.post_dispatch),
                web.post("/api/prognosis/resend", self.post_prognosis_resend),
                web.post("/api/offers/{message_id}/revoke", self.post_revoke),
            ]
        )
        return app

    async def start(self) -> None:
        await self.status.load_registered()
        runner = web.AppRunner(self.application(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.requested_port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        addresses = runner.addresses
        self.port = int(addresses[0][1]) if addresses else self.requested_port
        log.info("status page on http://%s:%s/", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- reading --------------------------------------------------------------------------------

    def _now(self) -> Any:
        return self.agent.clock.now()

    async def get_health(self, _request: web.Request) -> web.Response:
        problems = await self.health()
        return web.json_response(
            {"status": "unhealthy" if problems else "ok", "problems": problems},
            status=503 if problems else 200,
        )

    async def get_metrics(self, _request: web.Request) -> web.Response:
        body = await self.metrics.exposition()
        response = web.Response(body=body)
        response.headers["Content-Type"] = METRICS_CONTENT_TYPE
        return response

    async def get_site(self, _request: web.Request) -> web.Response:
        return web.json_response(self.status.site(self._now()))

    async def get_chargers(self, _request: web.Request) -> web.Response:
        return web.json_response(self.status.chargers())

    async def get_charger(self, request: web.Request) -> web.Response:
        charger_id = request.match_info["charger_id"]
        if charger_id not in self.status.charger_ids():
            raise _error(404, f"unknown charger {charger_id!r}")
        return web.json_response(self.status.charger(charger_id))

    async def get_sessions(self, _request: web.Request) -> web.Response:
        return web.json_response([s for c in self.status.chargers() for s in c["sessions"]])

    async def get_trade(self, _request: web.Request) -> web.Response:
        trade = await trade_snapshot(self.agent, self._now())
        return web.json_response(self._trade_json(trade))

    @staticmethod
    def _trade_json(trade: Any) -> dict[str, Any]:
        return {
            "period": trade.today.isoformat(),
            "current_isp": trade.current_isp,
            "ordered_now_w": trade.ordered_now_w,
            "prognoses": trade.prognoses,
            "offers": trade.offers,
            "orders": trade.orders,
            "delivery": trade.delivery,
        }

    async def get_status(self, _request: web.Request) -> web.Response:
        now = self._now()
        trade = await trade_snapshot(self.agent, now)
        return web.json_response(
            {
                "info": self.status.info(),
                "health": await self.health(),
                "site": self.status.site(now),
                "chargers": self.status.chargers(),
                "trade": self._trade_json(trade),
                # Added field: a fleet site's link to its centre, null when it trades itself.
                "fleet": await fleet_link(self.agent, now),
            }
        )

    def _chart_args(self, request: web.Request) -> tuple[str, date]:
        cps = [cp.entity_address for cp in self.agent.config.congestion_points]
        cp = request.query.get("congestion_point") or (cps[0] if cps else "")
        if cp not in cps:
            raise _error(404, f"unknown congestion point {cp!r}")
        return cp, self._period(request.query.get("period"))

    def _period(self, text: str | None) -> date:
        if not text:
            return self.agent.dispatcher.market.today(self._now())
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise _error(400, f"period {text!r} is not a date YYYY-MM-DD") from None

    async def get_chart(self, request: web.Request) -> web.Response:
        cp, period = self._chart_args(request)
        chart = await day_chart(self.agent, cp, period, self._now())
        return web.json_response(chart.as_json())

    async def get_chart_svg(self, request: web.Request) -> web.Response:
        cp, period = self._chart_args(request)
        now = self._now()
        chart = await day_chart(self.agent, cp, period, now)
        svg = chart_svg(chart, now)
        return web.Response(text=svg, content_type="image/svg+xml")

    async def page(self, request: web.Request) -> web.Response:
        now = self._now()
        period = self._period(request.query.get("period"))
        trade = await trade_snapshot(self.agent, now)
        charts = [
            await day_chart(self.agent, cp.entity_address, period, now)
            for cp in self.agent.config.congestion_points
        ]
        html = render_status_page(
            info=self.status.info(),
            site=self.status.site(now),
            chargers=self.status.chargers(),
            trade=trade,
            charts=charts,
            problems=await self.health(),
            now=now,
            period=period,
        )
        return web.Response(text=html, content_type="text/html")

    # --- changing state -------------------------------------------------------------------------

    def _authorize(self, request: web.Request) -> None:
        if self.token is None:
            raise _error(
                403,
                "state-changing endpoints are disabled: configure http.token "
                "(FLEXBRIDGE_HTTP__TOKEN) to enable them",
            )
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode(), self.token.encode()
        ):
            raise _error(
                401,
                "a valid 'Authorization: Bearer <token>' header is required",
                **{"WWW-Authenticate": 'Bearer realm="flexbridge"'},
            )

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except ValueError:
            raise _error(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise _error(400, "the body must be a JSON object")
        return body

    async def post_dispatch(self, request: web.Request) -> web.Response:
        """Run a dispatch round now (through the dispatcher's own loop, never a second one);
        `{"resend": true}` pushes every schedule again, changed or not."""
        self._authorize(request)
        body = await self._json_body(request)
        resend = body.get("resend", False)
        if not isinstance(resend, bool):
            raise _error(400, f"resend {resend!r} is not true or false")
        dispatcher = self.agent.dispatcher
        held = dispatcher.hold()
        if held is not None:
            # No round runs while the clock is not trusted: say so instead of waiting for one.
            raise _error(503, f"dispatch is held: {held}")
        try:
            async with asyncio.timeout(DISPATCH_WAIT_S):
                round_ = await dispatcher.round_now(resend=resend)
        except TimeoutError:
            raise _error(504, f"no dispatch round finished within {DISPATCH_WAIT_S:g} s") from None
        log.info("dispatch round run on request of the operator")
        return web.json_response(
            {
                "round": dispatcher.rounds,
                "at": round_.at.isoformat(),
                "cap_w": round_.cap_w[0],
                "unmet_wh": round_.unmet_wh,
                "chargers": len(round_.schedules),
                # The station-wide limit under the charger's id, an EVSE's own as "id/evse".
                "pushed": {
                    cid if evse_id == 0 else f"{cid}/{evse_id}": str(r.status)
                    for (cid, evse_id), r in round_.pushed.items()
                },
            }
        )

    async def post_prognosis_resend(self, request: web.Request) -> web.Response:
        """Send a new revision of a day's D-prognosis (after fixing a DSO-side problem)."""
        self._authorize(request)
        prognosis = self.agent.prognosis
        if prognosis is None:
            raise _error(409, "a site of a fleet sends no D-prognoses: its centre does")
        body = await self._json_body(request)
        cps = [cp.entity_address for cp in self.agent.config.congestion_points]
        cp = body.get("congestion_point") or (cps[0] if len(cps) == 1 else None)
        if cp not in cps:
            raise _error(404, f"unknown congestion point {cp!r}; configured: {', '.join(cps)}")
        period_text = body.get("period")
        if period_text is not None and not isinstance(period_text, str):
            raise _error(400, f"period {period_text!r} is not a date YYYY-MM-DD")
        period = self._period(period_text)
        today = self.agent.dispatcher.market.today(self._now())
        if period < today:
            raise _error(400, f"period {period} is over: its prognosis can no longer change")
        try:
            row = await prognosis.send(str(cp), period, "operator")
        except WorkerError as exc:
            raise _error(503, f"no forecast, nothing sent: {exc}") from exc
        log.info("D-prognosis resent on request of the operator", extra={"revision": row.revision})
        return web.json_response(
            {
                "congestion_point": row.congestion_point,
                "period": row.period.isoformat(),
                "revision": row.revision,
                "message_id": row.message_id,
            }
        )

    async def post_revoke(self, request: web.Request) -> web.Response:
        """Revoke an open FlexOffer (UFTP FlexOfferRevocation); never one that was ordered."""
        self._authorize(request)
        trader = self.agent.trader
        if trader is None:
            raise _error(409, "a site of a fleet makes no offers: its centre does")
        message_id = request.match_info["message_id"]
        offer = await self.agent.db.read(lambda c: trades.find_offer(c, message_id))
        if offer is None:
            raise _error(404, f"no offer with MessageID {message_id!r}")
        if offer.status not in records.OPEN_OFFER:
            raise _error(409, f"offer {message_id} is {offer.status}, not open")
        revoked = await trader.revoke(offer, "revoked by the operator")
        if not revoked:
            raise _error(409, f"offer {message_id} was ordered or closed meanwhile")
        return web.json_response({"message_id": message_id, "status": "revoked"})
