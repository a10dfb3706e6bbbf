"""What the demo shows: its timeline on simulated time, and the HTML report of the day.

Each line of the timeline carries the name of the story's step that said it (see
`agent.demo.scenario.STEPS`), and the agent's own warnings join it at their simulated time.
"""

from __future__ import annotations

import asyncio
import html
import logging
from datetime import date
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from agent.demo.defaults import DEMO_CONGESTION_POINT
from agent.runtime.clock import ScaledClock

STEP_WIDTH = 10  # the longest step name: the timeline's second column


class Timeline:
    """The story's lines on simulated local time, each labelled with the step that said it."""

    def __init__(self, zone: str, out: TextIO) -> None:
        self.zone = ZoneInfo(zone)
        self.out = out
        self.clock: ScaledClock | None = None  # from the first step on
        self.step = ""
        self.lines: list[str] = []

    def say(self, text: str) -> None:
        if self.clock is None:  # before simulated time runs: no time to tell
            line = f"{'':9}  {text}"
        else:
            local = self.clock.now().astimezone(self.zone)
            line = f"{local:%a %H:%M}  {self.step:<{STEP_WIDTH}} {text}"
        self.lines.append(line)
        print(line, file=self.out, flush=True)


class TimelineLog(logging.Handler):
    """The agent's warnings and errors as timeline lines on simulated time, so the story and
    what went wrong in it read in one order (wall-clock log lines would not fit in)."""

    def __init__(self, timeline: Timeline) -> None:
        super().__init__(logging.WARNING)
        self.timeline = timeline

    def emit(self, record: logging.LogRecord) -> None:
        from agent.runtime.logs import record_fields

        try:
            fields = record_fields(record)
            detail = ", ".join(f"{k}={v}" for k, v in fields.items())
            text = f"{record.levelname.lower()} from {record.name}: {record.getMessage()}"
            if detail:
                text += f" ({detail})"
            self.timeline.say(text)
        except Exception:
            self.handleError(record)


async def write_report(agent: Any, day: date, path: Path, timeline: list[str]) -> Path:
    """An HTML page with the day's chart (as on the status page) and the timeline; no
    scripts, works offline."""
    from agent.interfaces.status import day_chart
    from agent.interfaces.web.page import chart_svg

    chart = chart_svg(await day_chart(agent, DEMO_CONGESTION_POINT, day, agent.clock.now()), None)
    lines = "\n".join(f"<li>{html.escape(line)}</li>" for line in timeline)
    await asyncio.to_thread(
        path.write_text,
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<title>flexbridge demo report</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:1000px}"
        "li{font-family:monospace;margin:.2em 0;white-space:pre-wrap}</style></head><body>"
        f"<h1>flexbridge demo, {day.isoformat()}</h1>{chart}<h2>Timeline</h2><ol>{lines}</ol>"
        "<p>Simulated site and DSO; real agent, real sockets. Sessions drawn from ACN-Data "
        "(Caltech, CC BY 4.0).</p></body></html>",
        "utf-8",
    )
    return path
