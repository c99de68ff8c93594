"""Build ordinary Celery messages ourselves so that a batch can go out in one Redis pipeline.

Celery's `apply_async` publishes one message per round trip (plus an exchange lookup). Here
the message is made by Celery (`as_task_v2`) and kombu (serializer, body codec),
exactly as `apply_async` would, and only the final LPUSH is ours: a stock worker runs it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from celery import Celery
from kombu.serialization import dumps as serialize
from kombu.transport.virtual.base import Base64
from kombu.utils.json import dumps as to_json
from kombu.utils.uuid import uuid

__all__ = ["encode"]

EXCHANGE = "sluice"
_BASE64 = Base64()


def encode(app: Celery, task_id: str, name: str, payload: Any, queue: str,
           headers: dict[str, Any], expires: float | dt.datetime | None = None,
           countdown: float | None = None, argsrepr: str | None = None) -> str:
    """The JSON string kombu's Redis transport would LPUSH onto `queue` for this task.
    `argsrepr` is what Flower and logs show of the arguments (pass it with secrets masked)."""
    msg_headers, properties, body, _ = app.amqp.as_task_v2(
        task_id, name, args=[payload], expires=expires, countdown=countdown,
        argsrepr=argsrepr if argsrepr is not None else "[...]")
    msg_headers.update(headers)
    content_type, encoding, data = serialize(body, serializer="json")
    properties.update(delivery_mode=2, priority=0, body_encoding="base64", delivery_tag=uuid(),
                      delivery_info={"exchange": EXCHANGE, "routing_key": queue})
    return str(to_json({"body": _BASE64.encode(data), "content-encoding": encoding,
                    "content-type": content_type, "headers": msg_headers,
                    "properties": properties}))
