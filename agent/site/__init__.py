"""The site as the chargers report it (sessions, power, energy per ISP, applied limits), the
charger registry, the forecaster's use for this site, and dispatch of limits to the chargers."""
