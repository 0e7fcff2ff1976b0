# chunkd service image: slim Python, non-root, the sha256 example guest built in.
#   docker build -t chunkd . && docker run -p 7878:7878 -v /data:/srv/blobs:ro -e CHUNKD_AUTH_TOKEN=... chunkd
FROM python:3.11-slim

WORKDIR /opt/chunkd
COPY pyproject.toml README.md ./
COPY chunkd ./chunkd
COPY wit ./wit
COPY examples ./examples
COPY tests/guests ./tests/guests
COPY config ./config
COPY scripts ./scripts
RUN python -m venv .venv \
 && .venv/bin/pip install --no-cache-dir -e ".[test]" \
 && scripts/build-guests sha256 cancel_after \
 && scripts/build-native \
 && useradd --system --home-dir /var/lib/chunkd --create-home --shell /usr/sbin/nologin chunkd \
 && mkdir -p /srv/blobs /var/lib/chunkd && chown chunkd:chunkd /var/lib/chunkd

ENV PATH=/opt/chunkd/.venv/bin:$PATH PYTHONUNBUFFERED=1
USER chunkd
EXPOSE 7878
VOLUME ["/var/lib/chunkd"]
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:7878/healthz', timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["chunkd"]
CMD ["serve", "-c", "/opt/chunkd/config/docker.toml"]
