"""UFTP 3.1.0 (ShapeShifter) protocol library: models, XML codec, sealing, validation, transport.

A sans-I/O core (`models`, `codec`, `sealing`, `calendar`, `validation`, `responses` are pure
functions) with a thin shell (`store`, `database`, `http`, `outbox`, `oauth`,
`participant_base`, `participant`, `dso`). It imports nothing from `agent`, `ocpp_bridge` or
`forecaster`. Operator and developer documentation: docs/uftp.md.
"""
