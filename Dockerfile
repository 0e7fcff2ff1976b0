# chunkd: minimal image (the service issue adds serve, healthcheck and the unit).
FROM python:3.11-slim

WORKDIR /opt/chunkd
COPY pyproject.toml README.md ./
COPY chunkd ./chunkd
COPY wit ./wit
COPY examples ./examples
COPY config ./config
COPY scripts ./scripts
RUN python -m venv .venv \
 && .venv/bin/pip install --no-cache-dir -e ".[test]" \
 && scripts/build-guests sha256 cancel_after \
 && useradd --system --home /var/lib/chunkd --create-home chunkd \
 && mkdir -p /srv/blobs && chown chunkd /srv/blobs

ENV PATH=/opt/chunkd/.venv/bin:$PATH
USER chunkd
ENTRYPOINT ["chunkd"]
CMD ["check", "-c", "/opt/chunkd/config/chunkd.toml"]
