"""kombu's Redis transport, hardened for a worker that must keep consuming whatever happens.

Three changes to stock kombu 5.7:

- **Garbage is set aside, not fatal.** kombu decodes each popped item and builds a Message
  from it inside the worker's event loop; an item that is not JSON, or a JSON envelope that
  kombu cannot turn into a message it can track (no `delivery_tag`, no `delivery_info`, an
  unknown or broken body encoding, non-dict headers, ...), raises there, after the pop. The
  consumer then restarts, and used to put back (and so run twice) the jobs it was running.
  Here such an item becomes one dead letter, stored at once, and the worker carries on.
- **A lost connection leaves unacked jobs where they are.** On a reconnect kombu closes the
  old channel, which pushes its unacked messages back onto their queues even though the
  worker is still running those jobs (a second copy runs at once), and which crashes the
  worker when the connection is already released (`AttributeError: 'NoneType' object has
  no attribute 'hostname'`, kombu#582/#970). After a connection error the messages stay in
  kombu's unacked hash instead: the worker acks them as their jobs finish, and kombu's
  periodic restore hands out, after the visibility timeout, any that never are.
- **A closed channel can still ack.** Those acks go through the channel that delivered the
  message, closed by then; it keeps its connection parameters so it can reach Redis again.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from kombu.transport import redis as kredis
from kombu.transport import virtual as kvirtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from delivery.spool import spool
from sluice import keys
from sluice.connections import redis_client
from sluice.records import MALFORMED_TASK, DeadLetterRecord, FailureReason
from sluice.settings import get_settings

__all__ = ["Transport", "Channel", "QoS", "bad_message_record", "raw_text", "set_aside",
           "use_sink", "use_holder"]

log = logging.getLogger("delivery.transport")

#: reason of every dead letter made from a message that could not be run at all
MALFORMED = FailureReason.MALFORMED_MESSAGE
_RAW_MAX = 65_536


def raw_text(data: Any) -> str:
    """What a dead letter keeps of an undecodable body: UTF-8 text when it is text, else
    `base64:...`, capped at 64 KiB either way."""
    if isinstance(data, bytes):
        try:
            return data.decode("utf-8")[:_RAW_MAX]
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(data[:49_152]).decode()
    return str(data)[:_RAW_MAX]


def bad_message_record(queue: str, raw: Any, why: str, *, reason: str = MALFORMED,
                       exc_type: str = "MalformedMessage", task_id: str | None = None,
                       task_name: str | None = None,
                       content_type: str | None = None) -> DeadLetterRecord:
    """The dead letter for a message no task can run (the one builder: the transport uses
    it for queue items, the worker's consumer for messages Celery refuses). Never retryable:
    replaying it would fail the same way."""
    return DeadLetterRecord(
        task_id=task_id or f"malformed-{uuid.uuid4()}", task_name=task_name or MALFORMED_TASK,
        queue=queue, priority=queue.upper(),
        payload={"raw": raw_text(raw), "content_type": content_type},
        exc_type=exc_type, exc_message=why, reason=reason, retryable=False)


#: Where a bad message's dead letter goes: the worker installs the dead-letter recorder
#: (`workers.consumer`); until then (or anywhere else) the fsync'd spool keeps it.
Sink = Callable[[DeadLetterRecord], str]
_sink: Sink | None = None


def use_sink(sink: Sink) -> None:
    """Store set-aside records with `sink` (the worker passes the dead-letter recorder)."""
    global _sink
    _sink = sink


#: the worker this process is (`use_holder`): the messages its channels hold are indexed
#: under that name, so that `delivery.recovery` can give them back if it dies.
_holder: str | None = None


def use_holder(hostname: str) -> None:
    """Index the messages this process holds under `hostname` (a worker, at start)."""
    global _holder
    _holder = hostname


def set_aside(record: DeadLetterRecord) -> str | None:
    """Store a bad message's dead letter now (the installed sink, else the spool); returns
    where it went, None if even that failed. Never raises: the consumer must keep running."""
    try:
        if _sink is not None:
            return _sink(record)
        settings = get_settings()
        return spool(record, redis_client(), settings.spool_path)
    except Exception:
        log.exception("could not record dead letter %s", record.task_id)
        return None


class QoS(kredis.QoS):
    """kombu's ack emulation, except that closing a channel whose connection was lost does
    not put the jobs it delivered back on their queues (see the module docstring)."""

    def append(self, message: Any, delivery_tag: str) -> None:
        """kombu's, with the tag also in this worker's holdings, in the same pipeline."""
        delivery = message.delivery_info
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag, dumps(
                [message._raw, delivery["exchange"], delivery["routing_key"]]))
            if _holder is not None:
                pipe.sadd(keys.held(_holder), delivery_tag)
            pipe.execute()
        kvirtual.QoS.append(self, message, delivery_tag)

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        pipe = super()._remove_from_indices(delivery_tag, pipe)
        return pipe.srem(keys.held(_holder), delivery_tag) if _holder is not None else pipe

    def restore_unacked_once(self, stderr: Any = None) -> None:
        """Restore on a clean close (shutdown); after a connection loss, or if the restore
        fails, leave the messages in the unacked hash (each restore is one Redis
        transaction, so a message is either back on its queue or still in the hash)."""
        state: Any = self._delivered
        if state and not getattr(state, "restored", False) and self.channel.connection_lost:
            log.warning("connection lost with %d job(s) unacked: left in the unacked hash "
                        "(acked when they finish, else restored after the visibility "
                        "timeout)", len(state))
            self._on_collect.cancel()
            state.clear()
            state.restored = True
            return
        try:
            super().restore_unacked_once(stderr)
        except Exception as exc:
            log.warning("could not restore %d unacked job(s) on close (%r): left in the "
                        "unacked hash, restored after the visibility timeout", len(state), exc)
            state.clear()


class Channel(kredis.Channel):
    """A Redis channel that sets undecodable items aside and survives a lost connection."""

    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._sluice_params: dict[bool, dict[str, Any]] = {}
        super().__init__(*args, **kwargs)

    @property
    def connection_lost(self) -> bool:
        """Whether this channel is closing because its connection failed: it is detached,
        the kombu connection was released (Celery's reconnect), or the event loop saw an
        error on it."""
        transport = self.connection
        return transport is None or transport.client is None or transport.broken

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        """kombu's, remembered: a closed channel has no kombu connection to read them from,
        yet must reach Redis to ack the jobs it delivered."""
        try:
            params = super()._connparams(asynchronous=asynchronous)
        except AttributeError:
            if asynchronous not in self._sluice_params:
                raise
            return dict(self._sluice_params[asynchronous])
        self._sluice_params[asynchronous] = dict(params)
        return dict(params)

    def _lookup(self, exchange: str, routing_key: str, default: str | None = None
                ) -> list[str]:
        """kombu's, except on a closed channel (a late `reject(requeue=True)` of a job it
        delivered), which has lost its exchange table: Sluice's exchange is direct and each
        routing key names its queue, so the message goes back to that queue, not nowhere."""
        if self.connection is None:
            return [routing_key]
        return list(super()._lookup(exchange, routing_key, default))

    def _brpop_read(self, **options: Any) -> bool:
        """kombu's, with the popped item checked before kombu sees it."""
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
            why: str | None
            try:
                message = loads(bytes_to_str(item))
            except (ValueError, UnicodeDecodeError) as exc:
                message, why = None, f"not JSON: {exc}"
            else:
                why = self.unfit(message)
            if why is None:
                self.connection._deliver(message, dest)
            else:
                self._set_aside(dest, item, why)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu's own reset
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def unfit(self, payload: Any) -> str | None:
        """Why kombu could not deliver, ack or restore `payload`, or None if it can: the
        message is built here exactly as kombu will build it, plus the fields kombu's QoS
        reads later (tag, exchange, routing key, headers)."""
        if not isinstance(payload, dict) or "body" not in payload \
                or not isinstance(payload.get("properties"), dict):
            return "JSON but not a message envelope"
        if not isinstance(payload.get("headers", {}), dict):
            return "headers are not an object"
        try:
            message = self.Message(payload, channel=self)
        except Exception as exc:
            return f"not a kombu message: {exc!r}"
        tag, info = message.delivery_tag, message.delivery_info
        if not isinstance(tag, (str, int, float)) or isinstance(tag, bool):
            return f"bad delivery_tag {tag!r}"
        if not isinstance(info, dict) or not all(isinstance(info.get(k), str)
                                                 for k in ("exchange", "routing_key")):
            return f"bad delivery_info {info!r}"
        return None

    def _set_aside(self, queue: str, item: Any, why: str) -> None:
        record = bad_message_record(queue, item, why)
        where = set_aside(record)
        log.error("malformed item on queue %s set aside as dead letter %s (%s) -> %s", queue,
                  record.task_id, why, where)


class Transport(kredis.Transport):
    """kombu's Redis transport using `Channel` above."""

    Channel = Channel
    #: set when an error escaped a read in the event loop: Celery drops this connection next
    broken = False

    def on_readable(self, fileno: int) -> None:  # type: ignore[override]  # kombu's redis one
        """kombu's, remembering a failure so the channels close without restoring."""
        try:
            super().on_readable(fileno)
        except kredis.Empty:
            raise
        except Exception:
            self.broken = True
            raise
