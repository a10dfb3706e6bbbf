"""UFTP 3.1.0 (ShapeShifter) protocol library: models, XML codec, sealing, validation, transport.

A sans-I/O core (models, codec, sealing, ISP calendar, validation are pure functions) with a thin
aiohttp shell. It imports nothing from `agent`, `ocpp_bridge` or `forecaster`.
"""
