"""The aggregator's UFTP side: D-prognoses, offers, orders, settlement and metering, as a
state machine over persisted records."""
