"""flexbridge's product package: configuration, service, AGR logic, dispatch, telemetry, CLI.

`agent` composes the libraries `uftp`, `ocpp_bridge` and `forecaster`; they never import it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flexbridge")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
