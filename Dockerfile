FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sluice sluice
COPY delivery delivery
COPY ops ops
COPY producers producers
COPY workers workers
COPY dlq dlq
COPY schedules schedules
# /var/lib/sluice is the data volume (spool, effects): created here, owned by the user that
# runs Sluice, so a fresh named volume starts writable for it (Docker copies the ownership).
RUN pip install --no-cache-dir . && useradd --create-home sluice \
    && install -d -o sluice -g sluice -m 0750 /var/lib/sluice
USER sluice
CMD ["sluice", "worker"]
