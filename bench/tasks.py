"""Tasks for the benchmarks, identical in body for the Sluice app and a plain Celery app.

Each records when it started relative to when it was submitted (`submitted_at` travels in
the payload for both, so the measurement is the same code on both sides).
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery
from pydantic import BaseModel

from sluice.priorities import Priority
from workers.base import sluice_task

_client: redis.Redis | None = None


def client() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return _client


class Work(BaseModel):
    submitted_at: float = 0.0
    priority: str = "NORMAL"
    sleep_s: float = 0.0
    tid: str = ""


def work_body(payload: dict) -> None:
    started = time.time()
    wait = started - float(payload.get("submitted_at") or started)
    client().rpush(f"bench:started:{payload.get('priority', 'NORMAL')}",
                   f"{payload.get('tid', '')}|{started:.6f}|{wait:.6f}")
    if payload.get("sleep_s"):
        time.sleep(float(payload["sleep_s"]))
    client().incr(f"bench:done:{payload.get('priority', 'NORMAL')}")


@sluice_task("bench.work", Priority.NORMAL, Work, max_retries=0)
def sluice_work(payload: Work) -> None:
    work_body(payload.model_dump())


def plain_app(url: str) -> Celery:
    """A plain Celery deployment: defaults, JSON, the same four queue names."""
    app = Celery("plain", broker=url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True,
                    task_default_queue="normal", broker_connection_retry_on_startup=True)
    app.task(name="bench.work", shared=False)(work_body)
    return app


plain = plain_app(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
