"""kombu's Redis transport, with one change: an undecodable message is set aside, not fatal.

Stock kombu decodes the envelope of every popped item with `json.loads` inside the worker's
event loop; garbage bytes pushed onto a queue raise there, the item is already popped, and
the worker's consumer restarts. Here such an item becomes a dead-letter record in the spool
(`sluice:dlq:spool`, drained into the store by the reconcile job) and the worker carries on.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from kombu.transport import redis as kredis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from sluice import keys
from sluice.records import MALFORMED_TASK, DeadLetterRecord

__all__ = ["Transport", "Channel", "is_envelope"]

log = logging.getLogger("sluice.transport")


def is_envelope(message: Any) -> bool:
    """Whether a decoded item has the shape kombu needs to build a Message."""
    return (isinstance(message, dict) and "body" in message
            and isinstance(message.get("properties"), dict)
            and isinstance(message.get("headers", {}), dict))


def malformed_record(queue: str, item: bytes, why: str) -> DeadLetterRecord:
    """The dead letter for a queue item that is not a message at all."""
    text = item.decode("utf-8", errors="replace")[:65_536]
    return DeadLetterRecord(
        task_id=f"malformed-{uuid.uuid4()}", task_name=MALFORMED_TASK, queue=queue,
        priority=queue.upper(), payload={"raw": text}, exc_type="MalformedMessage",
        exc_message=why, reason="MALFORMED_MESSAGE", retryable=False)


class Channel(kredis.Channel):
    """A Redis channel whose BRPOP reader sets undecodable items aside."""

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP",
                                                        **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise kredis.Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            try:
                message = loads(bytes_to_str(item))
            except (ValueError, UnicodeDecodeError) as exc:
                message, why = None, f"not JSON: {exc}"
            else:
                why = "JSON but not a message envelope"
            if is_envelope(message):
                self.connection._deliver(message, dest)
            else:
                self._set_aside(dest, item, why)
            return True
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _set_aside(self, queue: str, item: bytes, why: str) -> None:
        record = malformed_record(queue, item if isinstance(item, bytes) else str(item).encode(),
                                  why)
        log.error("malformed item on queue %s set aside as dead letter %s (%s)", queue,
                  record.task_id, why)
        with self.conn_or_acquire() as client:
            client.rpush(keys.DLQ_SPOOL, record.to_json())


class Transport(kredis.Transport):
    """kombu's Redis transport using `Channel` above."""

    Channel = Channel
