# optout-sync in a container: a non-root user, the store on a volume, the HTTP server on 9464.
# Build: docker build -t optout-sync .
# Run:   docker run -d --name optout-sync -v optout-sync-data:/data \
#          -v "$PWD/settings.toml:/etc/optout-sync/settings.toml:ro" -p 127.0.0.1:9464:9464 optout-sync
# See docs/operations.md.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY connector ./connector
COPY adapters ./adapters
COPY state ./state
RUN pip install . && rm -rf /src

RUN groupadd --system --gid 10001 optout-sync \
 && useradd --system --uid 10001 --gid optout-sync --home-dir /data --shell /usr/sbin/nologin optout-sync \
 && mkdir -p /data /etc/optout-sync \
 && chown optout-sync:optout-sync /data \
 && chmod 0700 /data

# The store, its lock, watched folders and written files: keep them on the volume.
VOLUME ["/data"]
WORKDIR /data
# Settings are mounted read-only, so the store must not sit beside them; this wins over the file.
ENV OPTOUT_SYNC_STORE__PATH=/data/optout-sync.db
# Inside the container the server must listen on every interface to be reachable through -p.
ENV OPTOUT_SYNC_SERVER__LISTEN=0.0.0.0:9464
EXPOSE 9464

USER optout-sync

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4).status == 200 else 1)"]

# SIGTERM (docker stop) lets the workers finish their current batch and exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["optout-sync"]
CMD ["--config", "/etc/optout-sync/settings.toml", "run"]
