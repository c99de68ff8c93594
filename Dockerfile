FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sluice sluice
COPY producers producers
COPY workers workers
COPY dlq dlq
COPY schedules schedules
RUN pip install --no-cache-dir . && useradd --create-home sluice
USER sluice
CMD ["sluice", "worker"]
