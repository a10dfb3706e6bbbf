"""`flexbridge demo`: the agent on embedded defaults, with nothing real configured.

The demo writes everything (signing key, database) into a fresh directory so it never touches
an installed agent's state, and binds to loopback only.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from agent.config import Config
from uftp import keys

log = logging.getLogger(__name__)

DEMO_AGR_DOMAIN = "agr.flexbridge-demo.org"
DEMO_DSO_DOMAIN = "dso.flexbridge-demo.org"
DEMO_CONGESTION_POINT = "ean.871685900012636543"
DEMO_CHARGERS = 20


def demo_config(state_dir: Path, ocpp_port: int = 0, uftp_port: int = 0) -> Config:
    """A site with 20 chargers behind a 150 kW connection and one simulated DSO peer."""
    state_dir.mkdir(parents=True, exist_ok=True)
    agr_key_file = state_dir / "agr-signing.key"
    if not agr_key_file.exists():
        keys.write_signing_key(agr_key_file, keys.generate_signing_key())
    dso_key = keys.generate_signing_key()
    return Config.model_validate(
        {
            "site": {
                "id": "demo",
                "name": "flexbridge demo site",
                "timezone": "Europe/Amsterdam",
                "connection_capacity_w": 150_000,
                "safe_limit_w": 120_000,
            },
            "ocpp": {
                "host": "127.0.0.1",
                "port": ocpp_port or 9000,
                "security_profile": 1,
                "unknown_chargers": "register",
                "chargers": [
                    {"id": f"DEMO-{i:03d}", "max_current_a": 16, "phases": 3}
                    for i in range(1, DEMO_CHARGERS + 1)
                ],
            },
            "uftp": {
                "domain": DEMO_AGR_DOMAIN,
                "signing_key_file": str(agr_key_file),
                "host": "127.0.0.1",
                "port": uftp_port or 8443,
                "peers": [
                    {
                        "domain": DEMO_DSO_DOMAIN,
                        "role": "DSO",
                        "public_keys": [keys.public_key_b64(dso_key)],
                        "endpoint": "http://127.0.0.1:8444/shapeshifter/api/v3/message",
                    }
                ],
            },
            "congestion_points": [
                {"entity_address": DEMO_CONGESTION_POINT, "dso_domain": DEMO_DSO_DOMAIN}
            ],
            "storage": {"state_directory": str(state_dir)},
        }
    )


def demo_state_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="flexbridge-demo-"))
