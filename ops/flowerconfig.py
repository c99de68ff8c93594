"""Flower as Sluice runs it, however it is started: doors locked, queues and dead letters shown.

Flower has no plugin hook, and `celery -A sluice.app flower` runs none of our code but the
app's. So this module, once imported in Flower's process (`sluice flower` runs Flower through
`main` here; `celery -A sluice.app flower` imports it when the app lists it in `include`),
wraps `Flower.start_http_server`, which Flower calls once, right after it is built and before
it binds a socket, and there `lock`s the instance:

- **auth or loopback**: with neither basic auth nor OAuth configured, Flower may listen on
  127.0.0.1 only. Flower's default address (every interface) becomes 127.0.0.1; an explicit
  public address is refused (exit 2) with the setting to add.
- **no task applying**: `/api/task/apply`, `async-apply` and `send-task` enqueue a job past
  the gate, the kill switches and the ledger. They answer 403 whatever the other options say.
- **read only by default**: Flower's `read_only` mode (no revoke, terminate, rate limit,
  worker shutdown or consumer changes: each would drop an accepted job or break the strict
  queue order behind the drain) unless `FLOWER_READ_ONLY` or `--read_only` says otherwise.
- **the queue of each job**: Flower announces itself to the producers in Redis while it
  runs (`delivery.sending.announce_monitor`), so that they publish a `task-sent` event with
  each job, which carries its queue; the queue is among the task list's columns unless
  `FLOWER_TASKS_COLUMNS` is given.
- **dead letters explained**: every final failure of a Sluice task is dead-lettered, so a
  FAILURE page says so in its Result and names the commands that show and replay the row.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
import tornado.web

from sluice.errors import ConfigError

__all__ = ["LOOPBACK", "APPLY_PATHS", "TASKS_COLUMNS", "bind_address", "dead_letter_note",
           "lock", "install", "main"]

log = logging.getLogger("sluice.flower")

#: How long one announcement of Flower to the producers lasts, and how often it is renewed.
ANNOUNCE_TTL_S, ANNOUNCE_EVERY_S = 30, 10

#: Addresses Flower may listen on without auth.
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

#: Flower's endpoints that enqueue a task themselves (path patterns, as Flower routes them).
APPLY_PATHS = (r"/api/task/apply/(.+)", r"/api/task/async-apply/(.+)",
               r"/api/task/send-task/(.+)")

#: The task list's columns unless the operator picks them: the queue (routing key) and the
#: masked arguments next to Flower's defaults.
TASKS_COLUMNS = "name,uuid,state,routing_key,args,received,runtime,worker"

REFUSAL = ("Flower does not apply tasks in Sluice: a job applied here would skip the gate, "
           "the kill switches and the ledger. Submit it with `sluice submit`, the producer "
           "API or the HTTP API.")


def bind_address(address: str, authenticated: bool) -> str:
    """Where Flower may listen. With auth: where it was asked. Without: loopback only; no
    address (Flower's default, every interface) becomes 127.0.0.1. Raises ConfigError, naming
    the setting to add, for a public address without auth."""
    if authenticated or address in LOOPBACK:
        return address
    if not address:
        return "127.0.0.1"
    raise ConfigError(f"Flower on {address} needs FLOWER_BASIC_AUTH=user:password in the "
                      "environment (or --auth with OAuth): only 127.0.0.1 may run without it")


def dead_letter_note(task_id: str, attempts: int) -> str:
    """What a dead-lettered job's Flower page says instead of an empty result."""
    return (f"Dead-lettered after {attempts} attempt(s): the dead-letter store keeps the "
            f"payload and the failure. See the row: `sluice dlq show {task_id}`; replay it "
            "through the gate: `sluice dlq replay <id>` (the id `show` prints).")


class _ApplyRefused(tornado.web.RequestHandler):
    """403 for every method on Flower's task-applying endpoints (`REFUSAL` says why)."""

    def check_xsrf_cookie(self) -> None:
        """No token is needed to be refused (and tornado's own 403 would not say why)."""

    def prepare(self) -> None:
        self.set_status(403)
        self.finish({"error": REFUSAL})


def lock(flower: Any) -> None:
    """Lock one Flower instance (`flower.app.Flower`) before it binds: see the module's
    docstring. Exits with code 2 when a public address has no auth."""
    options = flower.options
    authenticated = bool(options.basic_auth or options.auth)
    if not options.unix_socket:
        try:
            options.address = bind_address(options.address or "", authenticated)
        except ConfigError as exc:
            from ops.cli.output import USAGE, fail

            fail(str(exc), USAGE)
    threading.Thread(target=_announce, name="sluice-announce", daemon=True).start()
    if not _given("read_only"):
        options.read_only = True
    if not _given("tasks_columns"):
        options.tasks_columns = TASKS_COLUMNS
    if options.format_task is None:
        options.format_task = _dead_letter_explainer(flower.capp)
    prefix = "/" + options.url_prefix.strip("/") if options.url_prefix else ""
    flower.add_handlers(r".*", [(prefix + path, _ApplyRefused) for path in APPLY_PATHS])


def _announce() -> None:
    """Keep telling the producers that a monitor listens (until the process ends)."""
    from delivery.sending import announce_monitor
    from sluice.connections import redis_client

    while True:
        try:
            announce_monitor(redis_client(), ANNOUNCE_TTL_S)
        except redis.RedisError as exc:  # Redis down: Flower shows nothing new anyway
            log.warning("cannot announce Flower to the producers: %s", type(exc).__name__)
        time.sleep(ANNOUNCE_EVERY_S)


def _given(option: str) -> bool:
    """Whether the operator set a Flower option (environment or command line)."""
    if f"FLOWER_{option.upper()}" in os.environ:
        return True
    names = {arg.lstrip("-").split("=", 1)[0].replace("-", "_") for arg in sys.argv[1:]}
    return option in names


def _dead_letter_explainer(capp: Any) -> Callable[[Any], Any]:
    """Flower's `format_task`: a FAILURE of a Sluice task (one that dead-letters its final
    failure) gets `dead_letter_note` as its result. Display only: no query, no I/O."""
    from workers.base import SluiceTask

    def explain(task: Any) -> Any:
        if getattr(task, "state", None) != "FAILURE" or getattr(task, "result", None):
            return task
        if isinstance(capp.tasks.get(getattr(task, "name", None) or ""), SluiceTask):
            task.result = dead_letter_note(task.uuid, int(getattr(task, "retries", 0) or 0) + 1)
        return task
    return explain


def install() -> None:
    """Make every Flower built in this process `lock` itself before it binds (once). Runs
    on import in a process that has loaded Flower (Flower imports the app's `include` while
    it builds itself, before it binds)."""
    from flower.app import Flower

    if getattr(Flower, "_sluice_locked", False):
        return
    start_http_server = Flower.start_http_server

    def locked_start_http_server(self: Any) -> Any:
        lock(self)
        return start_http_server(self)

    Flower.start_http_server = locked_start_http_server
    Flower._sluice_locked = True


def main(argv: list[str] | None = None) -> None:
    """`celery -A sluice.app flower ARGV...`, locked (what `sluice flower` runs)."""
    from celery.bin.celery import main as celery_main

    install()
    sys.argv = ["celery", "-A", "sluice.app", "flower", *(sys.argv[1:] if argv is None
                                                           else argv)]
    celery_main()


if __name__ == "__main__":  # `python -m ops.flowerconfig ARGS`: run the module's own copy
    from ops.flowerconfig import main as _main

    _main()
elif "flower.app" in sys.modules:  # imported in Flower's process (the app's `include`);
    install()                      # elsewhere (a worker) there is no Flower to lock
