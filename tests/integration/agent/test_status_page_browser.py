"""The status page in a real browser: headless Chromium renders it, chart included, to a PNG.

The page is server-rendered HTML with an inline SVG chart and no JavaScript; what an operator
sees is what Chromium paints. The screenshot is checked for the chart's series colours, so a
page that renders without its chart (or with an empty one) fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import aiohttp
import pytest
from lxml import etree

from tests.conftest import in_ci
from tests.support.png import read_png
from tests.support.trade_history import trading_agent

pytestmark = pytest.mark.integration

MISSING = (
    "chromium is not installed: `apt-get install chromium` (make test does this when run as "
    "root), or put chromium on PATH"
)
WIDTH, HEIGHT = 1280, 1600
PROGNOSIS_BLUE = (0x1F, 0x77, 0xB4)
MEASURED_GREEN = (0x2C, 0xA0, 0x2C)
SVG = "{http://www.w3.org/2000/svg}"


# The browser binary itself, where a distribution puts it behind a launcher script (Debian's
# /usr/bin/chromium): the flags below are all it needs, whatever a launcher would add.
BROWSER_BINARIES = ("/usr/lib/chromium/chromium", "/usr/lib/chromium-browser/chromium-browser")


def find_chromium() -> str:
    for binary in BROWSER_BINARIES:
        if os.access(binary, os.X_OK):
            return binary
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if in_ci():
        pytest.fail(MISSING)
    pytest.skip(MISSING)


def chromium_flags(euid: int) -> list[str]:
    """Headless flags that work without a launcher: Chromium refuses to run its sandbox as
    root, and a container's small /dev/shm would crash the renderer."""
    flags = [
        "--headless",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]
    if euid == 0:
        flags.append("--no-sandbox")
    return flags


async def screenshot(chromium: str, url: str, out: Path, profile: Path) -> str:
    """Chromium's own log, for the failure message."""
    process = await asyncio.create_subprocess_exec(
        chromium,
        *chromium_flags(os.geteuid()),
        f"--user-data-dir={profile}",
        f"--screenshot={out}",
        f"--window-size={WIDTH},{HEIGHT}",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        # The agent serves the page from this event loop: wait without blocking it.
        output, _ = await asyncio.wait_for(process.communicate(), 120)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError("chromium did not finish its screenshot within 120 s") from None
    assert process.returncode == 0, output.decode(errors="replace")
    return output.decode(errors="replace")


async def test_status_page_renders_with_its_chart_in_headless_chromium(tmp_path: Path) -> None:
    chromium = find_chromium()
    async with trading_agent(tmp_path) as t:
        async with aiohttp.ClientSession() as http, http.get(f"{t.url}/") as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            html = await response.text()
        # The served page holds the chart's SVG with drawn series, not only the frame.
        start, end = html.index("<svg"), html.index("</svg>") + len("</svg>")
        svg = etree.fromstring(html[start:end].encode())
        prognosis = svg.findall(f".//{SVG}path[@class='series-prognosis']")
        measured = svg.findall(f".//{SVG}path[@class='series-measured']")
        ordered = svg.findall(f".//{SVG}rect[@class='series-ordered']")
        assert len(prognosis) == 1
        assert prognosis[0].get("d", "").count("L") > 90  # a step per ISP of the day
        assert len(measured) == 1
        assert measured[0].get("d", "").startswith("M")
        assert ordered, "the order around now shows as bars"
        assert "ORD-TODAY" in html

        shot = tmp_path / "status.png"
        log = await screenshot(chromium, f"{t.url}/", shot, tmp_path / "chromium-profile")

    assert shot.exists(), log
    image = read_png(shot.read_bytes())
    assert (image.width, image.height) == (WIDTH, HEIGHT)
    # The prognosis is a 2 px step line over the whole day, the measured load a line up to now.
    assert image.count_near(PROGNOSIS_BLUE) > 500, "no prognosis line painted"
    # The measured line runs from midnight to now: short early in the day (the legend's
    # sample line alone is about 40 pixels).
    assert image.count_near(MEASURED_GREEN) > 50, "no measured line painted"
    # Keep the picture for people: pytest's tmp_path survives the run (last 3 runs).
    print(f"screenshot: {shot}")


def test_chromium_runs_without_a_launcher_with_the_flags_it_needs() -> None:
    chromium = find_chromium()
    installed = [b for b in BROWSER_BINARIES if os.access(b, os.X_OK)]
    if installed:  # Debian: /usr/bin/chromium is a launcher script in front of this binary
        assert chromium == installed[0]
    # Chromium refuses its sandbox as root: only then is it switched off.
    assert "--no-sandbox" in chromium_flags(0)
    assert "--no-sandbox" not in chromium_flags(1000)
    assert "--headless" in chromium_flags(1000)
    assert "--disable-dev-shm-usage" in chromium_flags(0)
