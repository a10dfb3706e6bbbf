# flexbridge: two set-up commands on a fresh Debian 12 / Raspberry Pi OS Bookworm machine.
#   make demo   the agent on embedded defaults (simulated site and DSO)
#   make test   ruff, mypy and the whole test suite against real peers
# Both create .venv on first use. As root they also install the Debian packages they need;
# otherwise they say which ones are missing.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS := requirements/constraints.txt
PACKAGES := agent ocpp_bridge uftp forecaster bench
SUDO := $(shell [ "$$(id -u)" = 0 ] && echo yes)

.PHONY: demo demo-fleet fleet-deps test lint typecheck pytest venv system-deps peers everest-peer lock bench clean help

help:
	@echo "make demo    run flexbridge on embedded defaults (simulated site and DSO)"
	@echo "make demo-fleet  the same for a small fleet: 3 sites, 2 congestion points, 1 aggregator"
	@echo "make test    lint, type-check and run every test (installs what they need)"
	@echo "make lock    refresh requirements/constraints.txt from a clean resolve"

demo: $(VENV)/.installed-runtime
	$(BIN)/flexbridge demo

# `flexbridge demo --fleet`: the aggregator's PostgreSQL driver (extra `central`), and as root
# the two Debian servers it starts in a temporary directory (otherwise the demo names them).
demo-fleet: $(VENV)/.installed-runtime fleet-deps
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[central]'
	$(BIN)/flexbridge demo --fleet

FLEET_TOOLS := nats-server:nats-server /usr/lib/postgresql/15/bin/initdb:postgresql-15
fleet-deps:
	@missing=""; for pair in $(FLEET_TOOLS); do \
	  tool=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$tool >/dev/null || [ -x /usr/sbin/$$tool ] || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ] && [ -n "$(SUDO)" ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian packages:$$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test: $(VENV)/.installed-test system-deps peers everest-peer
	$(BIN)/ruff check $(PACKAGES) tests
	$(BIN)/ruff format --check $(PACKAGES) tests
	$(BIN)/mypy $(PACKAGES)
	@# Tests marked `long` (minutes of wall-clock time each: a ten-minute CSMS outage that
	@# mostly waits, the fleet scenarios) run in a second pytest process beside the rest, so
	@# they add little to the suite's time on two cores;
	@# its output follows the main run's. Both must pass. pytest exits 5 when it collected
	@# nothing: a suite that cannot fail is a failure here, in either process.
	@long_log=$$(mktemp); \
	$(BIN)/python -m pytest -p no:cacheprovider -m long $(PYTEST_LONG_ARGS) >$$long_log 2>&1 & long_pid=$$!; \
	trap 'kill $$long_pid 2>/dev/null' INT TERM; \
	status=0; $(BIN)/python -m pytest -m "not long" $(PYTEST_ARGS) || status=$$?; \
	long_status=0; wait $$long_pid || long_status=$$?; \
	echo "--- tests marked long (second pytest process) ---"; cat $$long_log; rm -f $$long_log; \
	for s in $$status $$long_status; do \
	  if [ $$s -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; \
	done; \
	if [ $$status -ne 0 ]; then exit $$status; fi; \
	exit $$long_status

# --- Python environment --------------------------------------------------------------------
# Debian's python3 lacks the venv module until python3-venv is installed.
$(VENV)/bin/python:
	@if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
	  if [ -n "$(SUDO)" ] && command -v apt-get >/dev/null; then \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; \
	  else echo "python3 has no venv module: sudo apt-get install python3-venv" >&2; exit 1; fi; \
	fi
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "flexbridge needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed-runtime: $(VENV)/bin/python pyproject.toml $(CONSTRAINTS)
	$(PIP) install --quiet -c $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/bin/python pyproject.toml $(CONSTRAINTS)
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[test]'
	touch $(VENV)/.installed-runtime $@

venv: $(VENV)/.installed-test

# --- System packages the tests use as real peers ---------------------------------------------
# mosquitto (MQTT broker), nodejs + npm (the independent OCPP charger in tests/peers),
# systemd (systemd-analyze verifies the unit file), chromium (renders the status page headless),
# nats-server (the fleet's 3-node JetStream cluster) and PostgreSQL 15 (the central aggregator's
# database; the tests run initdb/pg_ctl in a temporary directory, no system cluster is used).
SYSTEM_TOOLS := mosquitto:mosquitto node:nodejs npm:npm systemd-analyze:systemd chromium:chromium \
  nats-server:nats-server /usr/lib/postgresql/15/bin/initdb:postgresql-15
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
	  tool=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$tool >/dev/null || [ -x /usr/sbin/$$tool ] || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ -n "$(SUDO)" ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "missing Debian packages (tests that need them will say so):$$missing" >&2; fi; \
	fi

peers: tests/peers/node_modules/.package-lock.json

tests/peers/node_modules/.package-lock.json: tests/peers/package.json tests/peers/package-lock.json
	@if command -v npm >/dev/null; then cd tests/peers && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm missing: the OCPP peer tests will say so" >&2; fi

# --- Real chargers: EVerest libocpp (OCPP 1.6 and 2.0.1) ---------------------------------------
# Built from the read-only `shared/peers/everest-libocpp` folder beside the clone (in a git
# worktree: beside the main checkout) into EVEREST_PEER_DIR; about 8 minutes the first time,
# under a second once built. As root build.sh apt-installs its build dependencies; otherwise it
# lists the missing ones and the real-charger tests say they are skipped. Under CI=true a
# failed or impossible build fails here (and the tests would fail too).
EVEREST_PEER_DIR ?= /var/cache/flexbridge/everest-libocpp
EVEREST_PEER_SOURCE ?= $(firstword $(wildcard ../shared/peers/everest-libocpp \
	$(dir $(abspath $(shell git rev-parse --git-common-dir 2>/dev/null)))../shared/peers/everest-libocpp))
export EVEREST_PEER_DIR EVEREST_PEER_SOURCE
CI_STRICT := $(filter 1 true yes TRUE True YES,$(CI))

everest-peer:
	@if [ -z "$(EVEREST_PEER_SOURCE)" ] || [ ! -f "$(EVEREST_PEER_SOURCE)/build.sh" ]; then \
	  msg="shared/peers/everest-libocpp not found beside the clone: the real-charger tests will be skipped"; \
	  if [ -n "$(CI_STRICT)" ]; then echo "$$msg (CI=true: failing)" >&2; exit 1; fi; \
	  echo "$$msg" >&2; exit 0; \
	fi; \
	if bash "$(EVEREST_PEER_SOURCE)/build.sh"; then :; else status=$$?; \
	  if [ -n "$(CI_STRICT)" ]; then echo "EVerest build failed (exit $$status)" >&2; exit $$status; fi; \
	  echo "EVerest build not done (exit $$status): the real-charger tests will be skipped" >&2; \
	fi

# --- Maintenance -----------------------------------------------------------------------------
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e '.[test,bench]'
	( echo "# Pinned versions for make demo / make test / the Docker image (make lock refreshes)."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^-e' ) > $(CONSTRAINTS)
	rm -rf .venv-lock

bench: $(VENV)/.installed-test
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[test,bench]'
	$(BIN)/python -m bench list

clean:
	rm -rf $(VENV) tests/peers/node_modules .mypy_cache .pytest_cache .ruff_cache
