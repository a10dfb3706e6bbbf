"""Server-rendered SVG chart of power per ISP: prognosis, measured load, ordered flexibility and
the limits the load must stay under (the DSO's, the site's).

Rendered on the gateway without JavaScript or a build step so the status page and the demo's
HTML report work offline and in any browser. Pure: data in, SVG text out. One unit: kW on the
y axis, times of day in the market's time zone (its ISP calendar) on the x axis, both named in
the axis titles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from zoneinfo import ZoneInfo

NOW_COLOR = "#c00"
_LEGEND_ROW = 18


@dataclass(frozen=True)
class Series:
    name: str
    values_w: Sequence[float | None]  # one per ISP; None = no value (future, gap)
    color: str
    kind: str = "line"  # "line", "step" or "bar"
    dashed: bool = False
    width: float = 2.0


def _nice_step(span: float, target_ticks: int = 5) -> float:
    raw = span / max(1, target_ticks)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _legend_rows(entries: Sequence[tuple[str, str]], width: float) -> list[list[tuple[str, str]]]:
    """Legend entries (name, symbol markup) wrapped into rows that fit `width`."""
    rows: list[list[tuple[str, str]]] = [[]]
    used = 0.0
    for entry in entries:
        size = _legend_width(entry[0])
        if rows[-1] and used + size > width:
            rows.append([])
            used = 0.0
        rows[-1].append(entry)
        used += size
    return rows


def _legend_width(name: str) -> float:
    return 34 + 7 * len(name)


def _symbol(series: Series, x: float, y: float) -> str:
    if series.kind == "bar":
        return (
            f'<rect x="{x:.1f}" y="{y - 10:.1f}" width="18" height="10" fill="{series.color}" '
            'fill-opacity="0.45"/>'
        )
    dash = ' stroke-dasharray="6,4"' if series.dashed else ""
    return (
        f'<line x1="{x:.1f}" x2="{x + 18:.1f}" y1="{y - 5:.1f}" y2="{y - 5:.1f}" '
        f'stroke="{series.color}" stroke-width="{series.width:g}"{dash}/>'
    )


def render_power_chart(
    isp_starts: Sequence[datetime],
    series: Sequence[Series],
    *,
    timezone: str = "UTC",
    title: str = "",
    width: int = 960,
    height: int = 380,
    now: datetime | None = None,
) -> str:
    """An SVG chart in kW with one x position per ISP and hour labels in `timezone`."""
    n = len(isp_starts)
    for s in series:
        if len(s.values_w) != n:
            raise ValueError(f"series {s.name!r} has {len(s.values_w)} values for {n} ISPs")
    zone = ZoneInfo(timezone)
    now_pos: float | None = None
    if now is not None and n and isp_starts[0] <= now:
        seconds = (now - isp_starts[0]).total_seconds()
        isp_s = (isp_starts[1] - isp_starts[0]).total_seconds() if n > 1 else 900.0
        if seconds <= n * isp_s:
            now_pos = seconds / isp_s
    left, right, top = 72, 16, 36 if title else 16
    legend: list[tuple[str, str]] = [(s.name, "") for s in series]
    if now_pos is not None and now is not None:
        legend.append((f"now ({now.astimezone(zone):%H:%M})", "now"))
    rows = _legend_rows(legend, width - left - right)
    bottom = 52 + _LEGEND_ROW * len(rows)
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for s in series for v in s.values_w if v is not None and math.isfinite(v)]
    lo = min([0.0, *values]) / 1000
    hi = max([1.0, *values]) / 1000
    step = _nice_step(hi - lo)
    lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
    if hi == lo:
        hi = lo + step

    def x(i: float) -> float:
        return left + plot_w * (i / max(1, n))

    def y(kw: float) -> float:
        return top + plot_h * (1 - (kw - lo) / (hi - lo))

    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" font-family="sans-serif" font-size="12">',
        f"<title>{escape(title or 'power per ISP')}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
    ]
    if title:
        out.append(
            f'<text x="{left}" y="22" font-size="15" font-weight="bold">{escape(title)}</text>'
        )
    tick = lo
    while tick <= hi + 1e-9:
        ty = y(tick)
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{ty:.1f}" y2="{ty:.1f}" '
            f'stroke="{"#888" if abs(tick) < 1e-9 else "#e4e4e4"}"/>'
        )
        out.append(f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end">{tick:g}</text>')
        tick += step
    middle = top + plot_h / 2
    out.append(
        f'<text class="axis-title" x="16" y="{middle:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 16 {middle:.1f})">power (kW)</text>'
    )
    for i, start in enumerate(isp_starts):
        local = start.astimezone(zone)
        if local.minute == 0 and local.hour % 3 == 0:
            out.append(
                f'<line x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{top}" y2="{top + plot_h}" '
                'stroke="#f0f0f0"/>'
            )
            out.append(
                f'<text x="{x(i):.1f}" y="{top + plot_h + 16}" text-anchor="middle">'
                f"{local:%H:%M}</text>"
            )
    out.append(
        f'<text class="axis-title" x="{left + plot_w / 2:.1f}" y="{top + plot_h + 34}" '
        f'text-anchor="middle">time of day, {escape(timezone)} (market time)</text>'
    )
    bar_w = plot_w / max(1, n)
    # Bars first, so every line stays visible over them.
    for s in sorted(series, key=lambda s: s.kind != "bar"):
        name = escape(s.name.replace(" ", "-"))
        if s.kind == "bar":
            for i, v in enumerate(s.values_w):
                if v is None or not math.isfinite(v) or v == 0:
                    continue
                y0, y1 = y(0), y(v / 1000)
                out.append(
                    f'<rect class="series-{name}" x="{x(i) + 0.5:.1f}" y="{min(y0, y1):.1f}" '
                    f'width="{max(0.5, bar_w - 1):.1f}" height="{abs(y1 - y0):.1f}" '
                    f'fill="{s.color}" fill-opacity="0.45"/>'
                )
            continue
        path: list[str] = []
        pen_up = True
        for i, v in enumerate(s.values_w):
            if v is None or not math.isfinite(v):
                pen_up = True
                continue
            vy = y(v / 1000)
            if s.kind == "step":
                path.append(f"{'M' if pen_up else 'L'}{x(i):.1f},{vy:.1f}L{x(i + 1):.1f},{vy:.1f}")
            else:
                path.append(f"{'M' if pen_up else 'L'}{x(i + 0.5):.1f},{vy:.1f}")
            pen_up = False
        if path:
            dash = ' stroke-dasharray="6,4"' if s.dashed else ""
            out.append(
                f'<path class="series-{name}" d="{"".join(path)}" fill="none" '
                f'stroke="{s.color}" stroke-width="{s.width:g}"{dash}/>'
            )
    if now_pos is not None:
        out.append(
            f'<line class="now" x1="{x(now_pos):.1f}" x2="{x(now_pos):.1f}" y1="{top}" '
            f'y2="{top + plot_h}" stroke="{NOW_COLOR}" stroke-dasharray="2,3">'
            "<title>now</title></line>"
        )
    by_name = {s.name: s for s in series}
    ly = top + plot_h + 38 + _LEGEND_ROW
    for row in rows:
        lx: float = left
        for name, kind in row:
            if kind == "now":
                symbol = (
                    f'<line x1="{lx:.1f}" x2="{lx + 18:.1f}" y1="{ly - 5}" y2="{ly - 5}" '
                    f'stroke="{NOW_COLOR}" stroke-width="2" stroke-dasharray="2,3"/>'
                )
            else:
                symbol = _symbol(by_name[name], lx, ly)
            out.append(
                f'<g class="legend">{symbol}<text x="{lx + 24:.1f}" y="{ly}">{escape(name)}'
                "</text></g>"
            )
            lx += _legend_width(name)
        ly += _LEGEND_ROW
    out.append("</svg>")
    return "\n".join(out)
