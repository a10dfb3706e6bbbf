"""The SVG chart: valid XML, one mark per series, local-time labels, refusal of ragged data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from lxml import etree

from agent.interfaces.web.chart import Series, render_power_chart

START = datetime(2026, 10, 24, 22, 0, tzinfo=UTC)  # 00:00 in Amsterdam (CEST)
ISPS = [START + timedelta(minutes=15 * i) for i in range(96)]


def test_renders_well_formed_svg_with_each_series() -> None:
    svg = render_power_chart(
        ISPS,
        [
            Series("prognosis", [10_000.0] * 96, "#1f77b4", kind="step"),
            Series("measured", [9_000.0] * 40 + [None] * 56, "#2ca02c"),
            Series("ordered", [0.0] * 60 + [-6_000.0] * 8 + [0.0] * 28, "#d62728", kind="bar"),
        ],
        timezone="Europe/Amsterdam",
        title="Congestion point ean.871685900012636543",
        now=START + timedelta(hours=10),
    )
    root = etree.fromstring(svg.encode())
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    ns = {"s": "http://www.w3.org/2000/svg"}
    assert len(root.findall(".//s:path[@class='series-prognosis']", ns)) == 1
    assert len(root.findall(".//s:path[@class='series-measured']", ns)) == 1
    assert len(root.findall(".//s:rect[@class='series-ordered']", ns)) == 8
    labels = [t.text for t in root.findall(".//s:text", ns)]
    assert "00:00" in labels
    assert "03:00" in labels
    assert "-10" in labels or "-5" in labels  # negative axis for the ordered reduction
    # One unit, named once: kW on the y axis; the x axis says whose clock it is.
    assert "power (kW)" in labels
    assert "time of day, Europe/Amsterdam (market time)" in labels
    assert not any(label and label.endswith(" W") for label in labels)
    # The "now" marker is drawn and explained in the legend.
    assert len(root.findall(".//s:line[@class='now']", ns)) == 1
    assert "now (09:00)" in labels  # 08:00 UTC on the day the clocks go back
    legend = [t.text for g in root.findall(".//s:g[@class='legend']", ns) for t in g if t.text]
    assert legend == ["prognosis", "measured", "ordered", "now (09:00)"]


def test_limit_lines_are_drawn_over_the_bars_and_the_legend_wraps() -> None:
    series = [
        Series("ordered", [0.0] * 60 + [-6_000.0] * 8 + [0.0] * 28, "#d62728", kind="bar"),
        Series("DSO limit", [40_000.0] * 96, "#9467bd", kind="step", dashed=True),
        *(Series(f"a rather long series name {k}", [1.0] * 96, "#000") for k in range(4)),
    ]
    svg = render_power_chart(ISPS, series, timezone="Europe/Amsterdam")
    root = etree.fromstring(svg.encode())
    marks = [e.get("class") for e in root.iter() if (e.get("class") or "").startswith("series")]
    assert marks.index("series-DSO-limit") > max(
        i for i, c in enumerate(marks) if c == "series-ordered"
    )
    rows = {
        float(t.get("y", "0"))
        for g in root.findall(".//{http://www.w3.org/2000/svg}g[@class='legend']")
        for t in g
        if t.tag.endswith("text")
    }
    assert len(rows) == 2, "six long names do not fit one 960 px row"


def test_no_now_marker_outside_the_day() -> None:
    svg = render_power_chart(
        ISPS, [Series("p", [1.0] * 96, "#000")], now=START + timedelta(days=1, hours=1)
    )
    assert 'class="now"' not in svg
    assert "now (" not in svg


def test_gaps_lift_the_pen() -> None:
    svg = render_power_chart(ISPS[:4], [Series("m", [1.0, None, 2.0, 3.0], "#000")])
    path = etree.fromstring(svg.encode()).find(".//{http://www.w3.org/2000/svg}path")
    assert path is not None
    assert path.get("d", "").count("M") == 2


def test_title_is_escaped() -> None:
    svg = render_power_chart(ISPS[:2], [Series("a<b", [1.0, 2.0], "#000")], title="x & y")
    etree.fromstring(svg.encode())
    assert "x &amp; y" in svg


def test_ragged_series_are_refused() -> None:
    with pytest.raises(ValueError, match="has 3 values for 96 ISPs"):
        render_power_chart(ISPS, [Series("short", [1.0, 2.0, 3.0], "#000")])
