"""The agent as `flexbridge run` starts it, on the demo site's configuration with the clock guard
on, and the site's flush interval as a knob: the child process `bench.wear` measures (its
write_bytes are the agent's alone, not the simulated chargers' or the DSO's)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from agent.app import build_agent
from agent.demo.defaults import demo_config
from agent.runtime.config import ClockConfig, Config
from agent.runtime.service import serve
from uftp import keys


def wear_config(params: dict[str, str | int]) -> Config:
    """`params`: state_dir, ocpp_port, uftp_port, dso_port, http_port, dso_key_file."""
    config = demo_config(
        Path(str(params["state_dir"])),
        int(params["ocpp_port"]),
        int(params["uftp_port"]),
        int(params["dso_port"]),
        keys.load_signing_key(Path(str(params["dso_key_file"]))),
        int(params["http_port"]),
    )
    return config.model_copy(update={"clock": ClockConfig()})


def main(argv: list[str]) -> None:
    agent = build_agent(wear_config(json.loads(Path(argv[0]).read_text())))
    if argv[1] != "default":
        agent.site.flush_interval_s = float(argv[1])
    asyncio.run(serve(agent.components))


if __name__ == "__main__":
    main(sys.argv[1:])
