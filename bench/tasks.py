"""Tasks for the benchmarks, identical in body for the Sluice app and the plain Celery apps.

Each records when it started, next to when it was submitted (`submitted_at` travels in the
payload for every app, so the measurement is the same code on every side): RPUSH of
`task id|started_at|wait|submitted_at` to `bench:started:<PRIORITY>`. The records go to
`BENCH_STATS_URL` when set (a Redis of the benchmark's own, so that measuring neither costs
the broker memory nor fails when a capped broker is full), else to `BENCH_REDIS_URL`.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery
from pydantic import BaseModel, SecretStr

from sluice.priorities import Priority
from workers.base import sluice_task

_client: redis.Redis | None = None

#: the four queue names, in the strict order an expert's worker consumes them
QUEUE_ORDER = ("critical", "high", "normal", "low")


def client() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ.get("BENCH_STATS_URL")
                                       or os.environ["BENCH_REDIS_URL"])
    return _client


class Work(BaseModel):
    submitted_at: float = 0.0
    priority: str = "NORMAL"
    sleep_s: float = 0.0
    tid: str = ""


def work_body(payload: dict) -> None:
    started = time.time()
    submitted = float(payload.get("submitted_at") or started)
    priority = payload.get("priority", "NORMAL")
    client().rpush(f"bench:started:{priority}",
                   f"{payload.get('tid', '')}|{started:.6f}|{started - submitted:.6f}|"
                   f"{submitted:.6f}")
    if payload.get("sleep_s"):
        time.sleep(float(payload["sleep_s"]))
    client().incr(f"bench:done:{priority}")


@sluice_task("bench.work", Priority.NORMAL, Work, max_retries=0)
def sluice_work(payload: Work) -> None:
    work_body(payload.model_dump())


class SecretWork(Work):
    token: SecretStr  # sealed by the producer, opened in the task


@sluice_task("bench.secret", Priority.NORMAL, SecretWork, max_retries=0)
def sluice_secret_work(payload: SecretWork) -> None:
    work_body(payload.model_dump(exclude={"token"}))


def plain_app(url: str) -> Celery:
    """A plain Celery deployment: defaults, JSON, the same four queue names."""
    app = Celery("plain", broker=url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True,
                    task_default_queue="normal", broker_connection_retry_on_startup=True)
    app.task(name="bench.work", shared=False)(work_body)
    return app


def tuned_app(url: str) -> Celery:
    """Plain Celery as an expert configures it for priorities on Redis: the four queues
    consumed in strict order (`queue_order_strategy: priority`, not round robin), one
    message reserved per process (`worker_prefetch_multiplier=1`) and acknowledged after
    the job (`task_acks_late`), so a waiting critical job is the next one a free process
    takes. No gate: every publish is accepted; deadlines are Celery's `expires`."""
    app = Celery("tuned", broker=url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True,
                    task_default_queue="normal", broker_connection_retry_on_startup=True,
                    broker_transport_options={
                        "queue_order_strategy": "priority",
                        "visibility_timeout": int(os.environ.get("BENCH_VISIBILITY_TIMEOUT",
                                                                 3600))},
                    worker_prefetch_multiplier=1, task_acks_late=True)
    app.task(name="bench.work", shared=False)(work_body)
    return app


plain = plain_app(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
tuned = tuned_app(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
