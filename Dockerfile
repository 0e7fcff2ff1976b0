# chunkd service image, multi-stage: the build stages have the compilers and guest tools,
# the runtime stage only what chunkd needs to run (no test tool), non-root, HEALTHCHECK.
#
#   docker build -t chunkd .
#   docker run -p 7878:7878 -v /data:/srv/blobs:ro -v chunkd-state:/var/lib/chunkd \
#              -e CHUNKD_AUTH_TOKEN=... chunkd
#
# Build arguments:
#   BASE        the runtime base, a Debian-based Python 3.11 (default python:3.11-slim)
#   BUILD_BASE  the base of the guest build stage: Python 3.11 with venv and pip (default: BASE)
#   RUST_IMAGE  the Rust toolchain image the native host core is built in (Rust >= 1.95,
#               Python 3.11 dev files; default rust:1-bookworm)
#   WHEEL       "source" (default): build chunkd's wheel from this tree in RUST_IMAGE;
#               "prebuilt": take dist/chunkd-*.whl, made beforehand with
#               `maturin build --release -o dist` (what scripts/test-deploy does on
#               machines without a registry)
#   PIP_CERT    a CA bundle path for pip inside the build (a TLS-intercepting proxy)
ARG BASE=python:3.11-slim
ARG BUILD_BASE=${BASE}
ARG RUST_IMAGE=rust:1-bookworm
ARG WHEEL=source

# --- chunkd's wheel (the Python package and the native host core), from source ------------
FROM ${RUST_IMAGE} AS wheel-source
ARG PIP_CERT=
RUN apt-get update && apt-get install -y --no-install-recommends python3-dev python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY native ./native
COPY chunkd ./chunkd
RUN [ -n "$PIP_CERT" ] && export PIP_CERT || unset PIP_CERT; \
    python3 -m venv /tmp/maturin && /tmp/maturin/bin/pip install --no-cache-dir "maturin>=1.9,<2" \
 && /tmp/maturin/bin/maturin build --release --locked -o /dist

# --- or the wheel built beforehand ----------------------------------------------------------
FROM ${BUILD_BASE} AS wheel-prebuilt
COPY dist/ /dist/

FROM wheel-${WHEEL} AS wheel

# --- the venv and the example guest ------------------------------------------------------------
FROM ${BUILD_BASE} AS build
ARG PIP_CERT=
WORKDIR /opt/chunkd
COPY --from=wheel /dist/ /tmp/dist/
COPY wit ./wit
COPY examples/sha256 ./examples/sha256
RUN [ -n "$PIP_CERT" ] && export PIP_CERT || unset PIP_CERT; \
    python3 -m venv /opt/chunkd/venv \
 && /opt/chunkd/venv/bin/pip install --no-cache-dir --disable-pip-version-check /tmp/dist/chunkd-*.whl \
 && python3 -m venv /tmp/guest-tools \
 && /tmp/guest-tools/bin/pip install --no-cache-dir --disable-pip-version-check componentize-py==0.25.1 \
 && mkdir -p /opt/chunkd/guests \
 && cd examples/sha256 && /tmp/guest-tools/bin/componentize-py -d /opt/chunkd/wit -w consumer-with-events \
      componentize app -o /opt/chunkd/guests/sha256.wasm \
 && rm -rf /opt/chunkd/examples /tmp/dist /tmp/guest-tools \
 && find /opt/chunkd/venv -name __pycache__ -prune -exec rm -rf {} + \
 && rm -rf /opt/chunkd/venv/lib/python3*/site-packages/pip* /opt/chunkd/venv/bin/pip*

# --- the runtime image ------------------------------------------------------------------------------
FROM ${BASE}
COPY --from=build /opt/chunkd /opt/chunkd
COPY config/docker.toml /opt/chunkd/config/docker.toml
RUN useradd --system --home-dir /var/lib/chunkd --create-home --shell /usr/sbin/nologin chunkd \
 && mkdir -p /srv/blobs /var/lib/chunkd && chown chunkd:chunkd /var/lib/chunkd \
 && /opt/chunkd/venv/bin/chunkd check -c /opt/chunkd/config/docker.toml \
 && rm -rf /var/lib/chunkd/* && chown -R root:root /opt/chunkd/cache

ENV PATH=/opt/chunkd/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    CHUNKD_HEALTH_URL=http://127.0.0.1:7878/healthz
USER chunkd
EXPOSE 7878
VOLUME ["/var/lib/chunkd"]
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen(os.environ['CHUNKD_HEALTH_URL'], timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["chunkd"]
CMD ["serve", "-c", "/opt/chunkd/config/docker.toml"]
