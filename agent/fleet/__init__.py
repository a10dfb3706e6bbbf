"""Fleet mode, the site's side: what a site agent publishes to the central aggregator and how
it applies the centre's commands exactly once (docs/architecture.md, "Fleet")."""
