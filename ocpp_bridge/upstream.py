"""Where a relayed charger's upstream connection goes, and how it proves who it is.

Local-controller mode (`ocpp_bridge.local_controller`) opens one websocket per charger to the
operator's CSMS. Its security profile is the upstream one, independent of how the charger
reached us: a charger on profile 1 here may be presented on profile 3 there.

- profile 0: ``ws://``, no credentials;
- profile 1/2: HTTP Basic with the presented identity; the password is the charger's own
  (passed through, when the charger sent one) or one configured for it; profile 2 over
  ``wss://``;
- profile 3: ``wss://`` with a client certificate (the CSMS checks its CN against the identity).
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from ocpp_bridge.profiles import ProfileLayout
from ocpp_bridge.relay import UpstreamPolicy
from ocpp_bridge.settings import CHARGER_ID_PATTERN, SecurityProfile, SettingsError

# Our profiles on a charger the operator's CSMS also manages: the same stack levels as a direct
# charger (chargers allow few levels), ids far above the small sequential ids CSMSs hand out.
LOCAL_CONTROLLER_LAYOUT = ProfileLayout(
    safe_profile_id=9_000_100,
    dynamic_profile_id_base=9_000_200,
    station_split_profile_id_base=9_000_300,
)


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """One CSMS endpoint. `url` is the CSMS's OCPP base (the identity is appended)."""

    url: str
    security_profile: SecurityProfile = SecurityProfile.NONE
    # The identity to present; None: the charger's own.
    identity: str | None = None
    # Profile 1/2: None passes the charger's own password through.
    password: str | None = field(default=None, repr=False)
    # Profile 2/3: the CSMS's CA (None: the system's); profile 3: our client certificate.
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        scheme = urlsplit(self.url).scheme
        tls = self.security_profile >= SecurityProfile.TLS_BASIC
        if scheme != ("wss" if tls else "ws"):
            wanted = "wss" if tls else "ws"
            raise SettingsError(
                f"upstream url {self.url!r}: security profile {int(self.security_profile)} "
                f"needs {wanted}://"
            )
        if self.identity is not None and not CHARGER_ID_PATTERN.match(self.identity):
            raise SettingsError(f"upstream identity {self.identity!r} is not a valid identity")
        if self.security_profile is SecurityProfile.MUTUAL_TLS and (
            self.cert_file is None or self.key_file is None
        ):
            raise SettingsError("upstream security profile 3 needs cert_file and key_file")

    def uri(self, charger_id: str) -> str:
        identity = self.identity or charger_id
        return f"{self.url.rstrip('/')}/{quote(identity, safe='')}"

    def authorization(self, charger_id: str, charger_password: str | None) -> str | None:
        """The Authorization header for the upstream handshake; None: none is sent.

        Raises `SettingsError` when profile 1/2 has no password to present.
        """
        if self.security_profile not in (SecurityProfile.BASIC, SecurityProfile.TLS_BASIC):
            return None
        password = self.password if self.password is not None else charger_password
        if password is None:
            raise SettingsError(
                f"charger {charger_id}: upstream security profile "
                f"{int(self.security_profile)} needs a password and the charger sent none"
            )
        user = self.identity or charger_id
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return f"Basic {token}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.security_profile < SecurityProfile.TLS_BASIC:
            return None
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file) if self.ca_file else None
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.security_profile is SecurityProfile.MUTUAL_TLS:
            if self.cert_file is None or self.key_file is None:
                raise SettingsError("upstream security profile 3 needs cert_file and key_file")
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """Local-controller mode: per charger (or by default) the CSMS it is relayed to."""

    default: UpstreamTarget | None = None
    chargers: Mapping[str, UpstreamTarget] = field(default_factory=dict)
    policy: UpstreamPolicy = UpstreamPolicy.AUTONOMOUS
    # Back-off between upstream attempts: doubles from the first to the cap (+ up to 10 %).
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 60.0
    # The first attempt's handshake; the charger's first CALLs wait this long at most.
    connect_timeout_s: float = 10.0
    # Answers from either side; the CSMS's own timeout should be longer than this.
    call_timeout_s: float = 30.0
    # While the CSMS is away (autonomous): Authorize answered Accepted, else refused.
    authorize_offline: bool = True
    # Where each charger's replay queue and transaction ids are kept across restarts (one JSON
    # file per charger, written before the charger hears a local answer); None: in memory.
    state_dir: Path | None = None
    # Kept for our own 1.6 transactionIds and requestIds, apart from the CSMS's numbers.
    local_transaction_ids: tuple[int, int] = (2_000_000_000, 2_100_000_000)
    request_ids: tuple[int, int] = (1_900_000_000, 2_000_000_000)

    def __post_init__(self) -> None:
        if not 0 < self.reconnect_initial_s <= self.reconnect_max_s:
            raise SettingsError("need 0 < reconnect_initial_s <= reconnect_max_s")
        if self.connect_timeout_s <= 0 or self.call_timeout_s <= 0:
            raise SettingsError("connect_timeout_s and call_timeout_s must be positive")
        for name in ("local_transaction_ids", "request_ids"):
            start, stop = getattr(self, name)
            if not 0 < start < stop <= 2**31:
                raise SettingsError(f"{name} must be a range within 1..2^31")

    def target_for(self, charger_id: str) -> UpstreamTarget | None:
        return self.chargers.get(charger_id, self.default)
