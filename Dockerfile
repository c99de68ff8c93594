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
# The console's templates and static files are not Python modules: until the package data
# lists them, they are copied next to the installed `ops.server` (-I: not the /app sources).
RUN pip install --no-cache-dir . && useradd --create-home sluice \
    && install -d -o sluice -g sluice -m 0750 /var/lib/sluice \
    && cp -r ops/server/templates ops/server/static \
       "$(python -I -c 'import ops, os; print(os.path.dirname(ops.__file__))')/server/"
USER sluice
# `sluice server` (the HTTP API and console) listens here
EXPOSE 8808
CMD ["sluice", "worker"]
