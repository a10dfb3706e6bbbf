"""The agent's SQLite file: one writer thread, migrations (the agent's and uftp's), and the
queries over the agent's tables. Imports only `agent.runtime`."""
