# flexbridge gateway image: docs/operations.md, "Docker".
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t flexbridge .
#   docker run -d --name flexbridge -v flexbridge-state:/var/lib/flexbridge \
#     -v /etc/flexbridge:/etc/flexbridge:ro -p 9000:9000 -p 8443:8443 flexbridge
#
# No step is specific to an architecture: every dependency has wheels for amd64 and arm64
# (aarch64; numba and llvmlite too). 32-bit ARM (armv7) is not supported: numba has no wheels.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtual environment with flexbridge and its pinned dependencies -----------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/flexbridge/venv
# Dependencies first: this layer is reused while only flexbridge's own code changes.
COPY requirements/constraints.txt requirements/constraints.txt
COPY pyproject.toml README.md LICENSE ./
COPY agent agent
COPY ocpp_bridge ocpp_bridge
COPY uftp uftp
COPY forecaster forecaster
# The same pins as `make demo` and the tests (requirements/constraints.txt).
RUN /opt/flexbridge/venv/bin/pip install --no-cache-dir -c requirements/constraints.txt . \
    && /opt/flexbridge/venv/bin/flexbridge --version

# --- runtime: the venv on a clean slim base, as an unprivileged user -------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="flexbridge" \
      org.opencontainers.image.description="EV chargers (OCPP 1.6J/2.0.1) to flexibility markets (UFTP 3.1.0)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/flexbridge/flexbridge"
RUN groupadd --system --gid 10001 flexbridge \
    && useradd --system --uid 10001 --gid flexbridge --home-dir /var/lib/flexbridge \
       --no-create-home --shell /usr/sbin/nologin flexbridge \
    && install -d -o flexbridge -g flexbridge -m 0750 /var/lib/flexbridge \
    && install -d -o root -g flexbridge -m 0750 /etc/flexbridge
COPY --from=build /opt/flexbridge/venv /opt/flexbridge/venv
# NUMBA_CACHE_DIR: compiled forecaster kernels persist in the state volume, so only the first
# start after an upgrade compiles them (flexbridge warmup fills the cache ahead of time).
# HEALTHCHECK_URL: where HEALTHCHECK asks; change it with http.port. (Not FLEXBRIDGE_...: every
# variable with that prefix overrides a configuration key.)
ENV PATH=/opt/flexbridge/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/var/lib/flexbridge/numba-cache \
    FLEXBRIDGE_LOGGING__FORMAT=logfmt \
    HEALTHCHECK_URL=http://127.0.0.1:8080/health
# Numeric, so Kubernetes' runAsNonRoot can check it without the image's /etc/passwd (DL3066).
USER 10001:10001
WORKDIR /var/lib/flexbridge
VOLUME ["/var/lib/flexbridge"]
# 9000 OCPP (chargers), 8443 UFTP (DSO), 8080 status page, JSON API and /metrics (loopback
# inside the container unless FLEXBRIDGE_HTTP__HOST=0.0.0.0).
EXPOSE 9000 8443 8080
# Slim images have no curl: ask /health with the interpreter that is there anyway. A non-2xx
# answer (503: database, OCPP or UFTP listener down) or no answer raises, exit code 1.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=8)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["flexbridge"]
CMD ["run", "--config", "/etc/flexbridge/flexbridge.toml"]
