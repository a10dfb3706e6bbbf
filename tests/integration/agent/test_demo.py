"""`flexbridge demo`, the README's first command, as a real process: the whole story runs,
the status page shows the day's chart while it does (seen by headless Chromium), the report is
written, and Ctrl-C stops it cleanly."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import pytest
from lxml import etree

from agent.demo.scenario import STEPS
from tests.integration.agent.test_status_page_browser import (
    MEASURED_GREEN,
    PROGNOSIS_BLUE,
    find_chromium,
    screenshot,
)
from tests.support.png import read_png
from tests.support.processes import AgentProcess

pytestmark = pytest.mark.integration

SVG = "{http://www.w3.org/2000/svg}"
README = Path(__file__).resolve().parents[3] / "README.md"
TIMELINE = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun) [0-2][0-9]:[0-5][0-9]  \S")


def readme_sample() -> list[str]:
    """The lines the README says `make demo` prints."""
    text = README.read_text()
    start = text.index("What `make demo` prints")
    block = text[text.index("```\n", start) + 4 :]
    return block[: block.index("```")].strip().splitlines()


def sample_pattern(line: str) -> re.Pattern[str]:
    """A README line as a pattern: its words as written, any day and any numbers."""
    pattern = re.sub(r"\d+", r"\\d+", re.escape(line))
    return re.compile(re.sub(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun)", r"\\w{3}", pattern))


async def test_the_demo_tells_the_whole_story_and_the_status_page_shows_it(
    tmp_path: Path,
) -> None:
    chromium = find_chromium()
    state = tmp_path / "demo"
    # Started as a background job would be, with SIGINT ignored: Ctrl-C (or kill -INT)
    # must still stop it cleanly.
    demo = AgentProcess(["demo", "--state-dir", str(state), "--keep-running"], sigint_ignored=True)
    try:
        line = await asyncio.to_thread(demo.wait_for, "status page: http://", 120)
        match = re.search(r"status page: (http://\S+)", line)
        assert match is not None
        url = match.group(1)
        # Once the site is capped the morning has history, a prognosis and an order.
        await asyncio.to_thread(demo.wait_for, "dispatch: site capped", 120)
        shot = tmp_path / "status.png"
        log = await screenshot(chromium, url, shot, tmp_path / "chromium-profile")
        image = read_png(shot.read_bytes())
        print(f"screenshot of the status page during the order: {shot}")
        assert image.count_near(PROGNOSIS_BLUE) > 500, log
        assert image.count_near(MEASURED_GREEN) > 50, log

        await asyncio.to_thread(demo.wait_for, "the agent keeps running", 180)
        demo.proc.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(demo.finish, 60)
    finally:
        demo.kill()
    output = "\n".join(demo.lines)
    assert code == 130, output
    assert "demo stopped" in output, output
    assert "Traceback" not in output, output
    # One clock: every line is on simulated time but the header and the closing words; the
    # agent's warnings, if any, come as timeline lines too.
    others = [line for line in demo.lines if not TIMELINE.match(line)]
    assert others == [
        others[0],
        "the agent keeps running; press Ctrl-C to stop",
        "demo stopped",
    ], output
    # The story reads from its steps: every line is labelled with the step that said it, in
    # the order of the steps, and every step but the quiet first one has its say.
    names = [step.name for step in STEPS]
    labels = [line.split()[2] for line in demo.lines if TIMELINE.match(line)]
    assert labels == sorted(labels, key=names.index), output
    assert set(labels) == set(names[1:]), output
    assert others[0].startswith("flexbridge demo: a day of trading in about a minute; it ends")
    assert f"State in {state} (kept)." in others[0]
    # An accepted clear of an EVSE's profile is not a charger refusing its schedule.
    assert "did not take their dynamic schedule" not in output, output
    assert "reduce the load by at least " in output, output
    assert f"report (the day's chart and this timeline): {state / 'report.html'}" in output
    # The README's sample is this output (but the lines that depend on --state-dir and
    # --keep-running, which `make demo` does not pass).
    for line in readme_sample():
        if "status page" in line or "State in" in line or "report" in line or "done in" in line:
            continue
        assert any(sample_pattern(line).fullmatch(out) for out in demo.lines), (line, output)
    # Today's real date: 92 or 100 ISPs on a DST Sunday.
    assert re.search(r"D-Prognosis revision 1: (92|96|100) ISPs", output), output
    for step in (
        "DSO FlexRequest:",
        "FlexOffer:",
        "; DSO: accepted",
        "DSO FlexOrder DEMO-ORD-1",
        "with the order included",
        "dispatch: site capped",
        "delivered: on average",
        "FlexSettlement answered Accepted",
    ):
        assert step in output, f"{step!r} missing from:\n{output}"
    report = state / "report.html"
    html = report.read_text()
    start, end = html.index("<svg"), html.index("</svg>") + len("</svg>")
    svg = etree.fromstring(html[start:end].encode())
    assert svg.findall(f".//{SVG}path[@class='series-measured']")
    assert svg.findall(f".//{SVG}path[@class='series-DSO-limit']")
    assert svg.findall(f".//{SVG}path[@class='series-site-cap']")
    ordered = [r for r in svg.iter(f"{SVG}rect") if r.get("class", "").startswith("series-ordered")]
    assert ordered, "the ordered flexibility shows as bars"
