FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY handlers ./handlers
RUN pip install --no-cache-dir . && useradd --system --uid 10001 bot \
  && mkdir /data && chown bot:bot /data
USER bot
# The bot runs in a directory of its own (/app stays root's): DATA_DIR, `.data` unless set,
# lands in /data/.data, where the embedded Redis keeps its files when REDIS_URL is unset.
# A volume mounted on /data keeps them.
WORKDIR /data
VOLUME /data

ENV HOST=0.0.0.0 PORT=3000
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
  CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"3000\")}/healthz', timeout=2)"
STOPSIGNAL SIGTERM
CMD ["ivh-approvals", "run"]
