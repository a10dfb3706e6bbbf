"""OCPP 1.6J and 2.0.1 charger side: CSMS server, charger model, fail-safe charging profiles.

Upward it emits version-neutral events, downward it offers version-neutral commands in watts;
amps, phases, stack levels and the 1.6/2.0.1 differences stay inside. It imports nothing from
`agent`, `uftp` or `forecaster`.
"""
