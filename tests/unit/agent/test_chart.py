"""The SVG chart: valid XML, one mark per series, local-time labels, refusal of ragged data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from lxml import etree

from agent.web.chart import Series, render_power_chart

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
    assert "-10 kW" in labels or "-5 kW" in labels  # negative axis for the ordered reduction


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
