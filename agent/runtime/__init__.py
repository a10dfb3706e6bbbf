"""Process plumbing: configuration, service lifecycle, logging, systemd, the state
directory, the clock and its guard, failpoints. Imports nothing else from `agent`."""
