"""The status page as one server-rendered HTML document. Pure: status shapes in, HTML out.

No JavaScript and no build step: the page must work from a gateway without internet, in any
browser, and under a strict reverse proxy. It refreshes itself every `refresh_s` seconds with a
meta tag. Every value is escaped; charger ids and DSO texts are not trusted markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from html import escape
from typing import Any
from zoneinfo import ZoneInfo

from agent.interfaces.status import DayChart, JsonObject, TradeSnapshot
from agent.interfaces.web.chart import Series, render_power_chart

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;background:#fafafa}
h1{margin:0 0 .2rem 0;font-size:1.5rem}h2{font-size:1.15rem;margin:1.6rem 0 .5rem}
.sub{color:#666;margin-bottom:1rem}.bad{color:#b00020;font-weight:bold}.ok{color:#1b7f3b}
table{border-collapse:collapse;background:#fff;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.25rem .6rem;text-align:left}th{background:#f0f0f0}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:.8rem}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6rem .9rem;min-width:9rem}
.card b{display:block;font-size:1.3rem}figure{margin:0}
"""


def kw(value: float | None) -> str:
    return "–" if value is None else f"{value / 1000:.1f} kW"


def kwh(value: float | None) -> str:
    return "–" if value is None else f"{value / 1000:.1f} kWh"


def _text(value: Any) -> str:
    return "–" if value is None or value == "" else escape(str(value))


def _local(value: str | None, zone: ZoneInfo) -> str:
    if not value:
        return "–"
    return escape(datetime.fromisoformat(value).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S"))


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> str:
    if not rows:
        return '<p class="sub">none</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{cell}</td>' if k in numeric else f"<td>{cell}</td>"
            for k, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


DSO_LIMIT_COLOR = "#9467bd"
SITE_CAP_COLOR = "#444444"


def chart_svg(chart: DayChart, now: datetime | None) -> str:
    """Prognosis (what the DSO was told) vs measured load vs ordered flexibility per ISP, with
    the DSO's requested limit and the site cap the load is held under, on market time."""
    series = [
        Series("prognosis", chart.prognosis_w, "#1f77b4", kind="step"),
        Series("measured", chart.measured_w, "#2ca02c"),
        Series("ordered", chart.ordered_w, "#ff7f0e", kind="bar"),
    ]
    if chart.baseline_w != chart.prognosis_w:
        series.insert(1, Series("baseline", chart.baseline_w, "#7f7f7f", kind="step", dashed=True))
    if any(v is not None for v in chart.dso_limit_w):
        series.append(
            Series("DSO limit", chart.dso_limit_w, DSO_LIMIT_COLOR, kind="step", dashed=True)
        )
    if chart.site_cap_w:
        series.append(
            Series(
                "site cap", chart.site_cap_w, SITE_CAP_COLOR, kind="step", dashed=True, width=1.5
            )
        )
    revision = f", revision {chart.revision}" if chart.revision is not None else ", no prognosis"
    return render_power_chart(
        chart.isp_starts,
        series,
        timezone=chart.time_zone,
        title=f"{chart.congestion_point} on {chart.period.isoformat()}{revision}",
        now=now,
    )


def _day_links(period: date, today: date) -> str:
    """Links to the neighbouring days' charts: the last day's order stays in reach after
    midnight."""
    before = period - timedelta(days=1)
    links = [f'<a href="/?period={before.isoformat()}">&larr; {before.isoformat()}</a>']
    if period < today:
        after = period + timedelta(days=1)
        links.append(f'<a href="/?period={after.isoformat()}">{after.isoformat()} &rarr;</a>')
        links.append('<a href="/">today</a>')
    return '<p class="sub">' + " · ".join(links) + "</p>"


def _limit_cell(charger: dict[str, Any]) -> str:
    """The limit the charger holds, and where it comes from unless it is our dynamic one."""
    source = charger["limit_source"]
    if source == "none":
        return "uncontrollable"
    if source == "fallback":
        return f"{kw(charger['limit_w'])} ({_text(charger['limit_purpose'])})"
    return kw(charger["limit_w"]) + (" (safe)" if source == "safe" else "")


def render_status_page(
    *,
    info: JsonObject,
    site: JsonObject,
    chargers: Sequence[JsonObject],
    trade: TradeSnapshot,
    charts: Sequence[DayChart],
    problems: Sequence[str],
    now: datetime,
    refresh_s: int = 30,
    period: date | None = None,
) -> str:
    """The page; `period` is the day of the charts (default: the trade snapshot's today)."""
    zone = ZoneInfo(site["time_zone"])
    day = period or trade.today
    health = (
        '<span class="ok">healthy</span>'
        if not problems
        else '<span class="bad">unhealthy: ' + escape("; ".join(problems)) + "</span>"
    )
    cards = [
        ("Power now", kw(site["power_w"])),
        ("Power cap now", kw(site["cap_w"])),
        ("Connection", kw(site["capacity_w"])),
        ("Ordered now", kw(trade.ordered_now_w)),
        ("Chargers online", f"{site['chargers_online']} / {site['chargers_total']}"),
        ("Sessions", str(site["sessions"])),
        ("Open offers", str(len(trade.offers))),
        ("Orders", str(len(trade.orders))),
    ]
    sessions = [s for c in chargers for s in c["sessions"]]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{refresh_s}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>flexbridge · {escape(site['name'])}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{escape(site['name'])}</h1>",
        f'<div class="sub">site <code>{escape(site["id"])}</code> · flexbridge '
        f"{escape(str(info['version']))} · {health} · "
        f"{escape(now.astimezone(zone).strftime('%Y-%m-%d %H:%M:%S %Z'))} · "
        f"last dispatch {_local(site['last_dispatch_at'], zone)}</div>",
        '<div class="cards">'
        + "".join(f'<div class="card">{escape(k)}<b>{escape(v)}</b></div>' for k, v in cards)
        + "</div>",
        f"<h2>{'Today' if day == trade.today else escape(day.isoformat())} per ISP</h2>",
        _day_links(day, trade.today),
    ]
    parts.extend(f"<figure>{chart_svg(chart, now)}</figure>" for chart in charts)
    if not charts:
        parts.append('<p class="sub">no congestion point configured</p>')
    parts += [
        "<h2>Open offers</h2>",
        _table(
            ["offer", "congestion point", "period", "status", "expires", "option: ISPs, price"],
            [
                [
                    _text(o["message_id"][:8]),
                    _text(o["congestion_point"]),
                    _text(o["period"]),
                    _text(o["status"]),
                    _local(o["expires_at"], zone),
                    "<br>".join(
                        escape(
                            f"{opt['reference']}: "
                            + ", ".join(
                                f"ISP {i['start']}+{i['duration']} {kw(i['power_w'])}"
                                for i in opt["isps"]
                            )
                            + f", {opt['price']} {o['currency']}"
                        )
                        for opt in o["options"]
                    ),
                ]
                for o in trade.offers
            ],
            set(),
        ),
        "<h2>Orders from today on</h2>",
        _table(
            ["order", "congestion point", "period", "ISPs", "price", "received"],
            [
                [
                    _text(o["order_reference"]),
                    _text(o["congestion_point"]),
                    _text(o["period"]),
                    escape(
                        ", ".join(
                            f"{i['start']}+{i['duration']}: {kw(i['power_w'])}" for i in o["isps"]
                        )
                    ),
                    _text(f"{o['price']} {o['currency']}"),
                    _local(o["received_at"], zone),
                ]
                for o in trade.orders
            ],
            set(),
        ),
        "<h2>Delivery of today's orders</h2>",
        _table(
            ["order", "ISP", "start", "baseline", "ordered", "target", "measured", "delivered"],
            [
                [
                    _text(d["order_reference"]),
                    str(i["isp"]),
                    _local(i["start"], zone),
                    kw(i["baseline_w"]),
                    kw(i["ordered_w"]),
                    kw(i["target_w"]),
                    kw(i["measured_w"]),
                    "–" if i["delivered"] is None else ("yes" if i["delivered"] else "no"),
                ]
                for d in trade.delivery
                for i in d["isps"]
            ],
            {1, 3, 4, 5, 6},
        ),
        f"<h2>Chargers ({len(chargers)})</h2>",
        _table(
            ["charger", "status", "power", "limit", "session energy", "model", "last seen"],
            [
                [
                    _text(c["id"]),
                    _text(c["status"]),
                    kw(c["power_w"]),
                    _limit_cell(c),
                    kwh(c["session_energy_wh"]) if c["session_active"] else "–",
                    _text(" ".join(x for x in (c["vendor"], c["model"]) if x)),
                    _local(c["last_seen"], zone),
                ]
                for c in chargers
            ],
            {2, 3, 4},
        ),
        f"<h2>Sessions ({len(sessions)})</h2>",
        _table(
            ["charger", "EVSE", "started", "energy", "power", "requested", "departure"],
            [
                [
                    _text(s["charger_id"]),
                    str(s["evse_id"]),
                    _local(s["started_at"], zone),
                    kwh(s["energy_wh"]),
                    kw(s["power_w"]),
                    kwh(s["requested_energy_wh"]),
                    _local(s["departure_at"], zone),
                ]
                for s in sessions
            ],
            {1, 3, 4, 5},
        ),
        '<p class="sub"><a href="/api/status">JSON API</a> · <a href="/metrics">metrics</a> · '
        '<a href="/health">health</a></p>',
        "</body></html>",
    ]
    return "\n".join(parts)
