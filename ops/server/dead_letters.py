"""Dead letters as the API and the console see them: the CLI's filters plus the error type
and text in the (masked) payload, failures grouped by error, and bulk replay / discard that
go through the same `dlq.replay` functions as `sluice dlq replay`, each recorded in the audit
log.

Rows leave here as the store keeps them: payloads with secret fields masked. The sealed copy
is never unsealed for display; only its presence is shown.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import String, cast, func, select

from dlq.models import DeadLetter, Status
from dlq.replay import ReplayOutcome, ReplayResult, replay_many
from dlq.rows import as_utc
from dlq.store import CHUNK, DeadLetterStore, Filters
from producers import Producer
from sluice.errors import UsageError
from sluice.priorities import Priority
from sluice.settings import Settings

__all__ = ["Search", "DeadLetterQuery", "row_dict", "error_groups", "BulkResult",
           "replay_bulk", "discard_bulk", "BulkRequest", "flower_link", "priorities_of",
           "MAX_PAGE"]

MAX_PAGE = 500


@dataclass(frozen=True, slots=True)
class Search(Filters):
    """The store's filters, plus the exception type, the tenant and a text to find in the
    payload (the stored, masked payload: a secret's value can never be searched for)."""

    error: str | None = None
    text: str | None = None
    tenant: str | None = None

    def apply(self, stmt: Any) -> Any:
        """The store's WHERE clauses, then ours."""
        stmt = Filters.apply(self, stmt)
        if self.tenant:
            column = getattr(DeadLetter, "tenant", None)  # a column since tenants exist
            if column is None:
                raise UsageError("dead letters do not record a tenant in this version")
            stmt = stmt.where(column == self.tenant)
        if self.error:
            stmt = stmt.where(DeadLetter.exc_type == self.error)
        if self.text:
            payload = func.lower(cast(DeadLetter.payload, String))
            stmt = stmt.where(payload.contains(self.text.lower(), autoescape=True))
        return stmt


class DeadLetterQuery(BaseModel):
    """Which dead letters: every field optional, all of them must match."""

    model_config = ConfigDict(extra="forbid")

    task: str | None = Field(None, max_length=200)
    queue: str | None = Field(None, max_length=32)
    priority: str | None = None
    status: Status | None = None
    error: str | None = Field(None, max_length=200, description="exception type")
    q: str | None = Field(None, max_length=200, description="text in the (masked) payload")
    tenant: str | None = Field(None, max_length=200)
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    age_s: float | None = Field(None, gt=0, le=100 * 365 * 86400,
                                description="failed within the last age_s seconds")

    @field_validator("priority")
    @classmethod
    def _priority(cls, value: str | None) -> str | None:
        return None if value is None else Priority.parse(value).name

    @field_validator("task", "queue", "error", "q", "priority", "tenant", mode="before")
    @classmethod
    def _blank(cls, value: Any) -> Any:
        """An empty form field means no filter."""
        return None if value == "" else value

    def filters(self, now: dt.datetime) -> Search:
        """As the store's filters; `age_s` counts back from `now`."""
        since = self.since
        if self.age_s is not None:
            recent = now - dt.timedelta(seconds=self.age_s)
            since = recent if since is None else max(since, recent)
        return Search(self.task, self.queue, self.priority,
                      None if self.status is None else self.status.value, since, self.until,
                      error=self.error, text=self.q, tenant=self.tenant)

    def described(self) -> dict[str, Any]:
        """The filters that are set, JSON-ready (what the audit log records)."""
        return self.model_dump(mode="json", exclude_none=True)


class BulkRequest(BaseModel):
    """Either `ids` or a `filter` (whose status defaults to `pending`, as the CLI's)."""

    model_config = ConfigDict(extra="forbid")

    ids: list[int] | None = Field(None, max_length=100_000)
    filter: DeadLetterQuery | None = None

    @model_validator(mode="after")
    def _one_of(self) -> BulkRequest:
        if (self.ids is None) == (self.filter is None):
            raise ValueError("give either ids or filter")
        return self

    def resolve(self, store: DeadLetterStore, now: dt.datetime) -> list[int]:
        """The ids to act on."""
        if self.ids is not None:
            return list(dict.fromkeys(self.ids))
        query = self.filter or DeadLetterQuery()
        if query.status is None:
            query = query.model_copy(update={"status": Status.PENDING})
        return store.ids(query.filters(now))

    def scope(self) -> dict[str, Any]:
        """What the audit log records about the selection."""
        if self.ids is not None:
            return {"ids": len(self.ids)}
        return {"filter": (self.filter or DeadLetterQuery()).described()}


def flower_link(settings: Settings, task_id: str) -> str | None:
    """The job's page in Flower, when SLUICE_SERVER_FLOWER_URL says where Flower is."""
    base = settings.server_flower_url
    return f"{base.rstrip('/')}/task/{task_id}" if base else None


def row_dict(row: DeadLetter, full: bool = False) -> dict[str, Any]:
    """The row's columns (the CLI's `--json` shape), without the sealed copy of the payload
    (only whether there is one) and, unless `full`, without the traceback."""
    out = row.as_dict()
    out["sealed"] = bool(out.get("sealed"))
    if not full:
        out.pop("traceback", None)
    return out


def error_groups(store: DeadLetterStore, filters: Filters,
                 limit: int = 200) -> list[dict[str, Any]]:
    """Failures grouped by (task, exception type), largest group first, with the latest
    failure time and one of its messages."""
    count = func.count(DeadLetter.id)
    stmt = filters.apply(select(DeadLetter.task_name, DeadLetter.exc_type, count,
                                func.max(DeadLetter.last_failed_at),
                                func.max(DeadLetter.exc_message)))
    stmt = stmt.group_by(DeadLetter.task_name, DeadLetter.exc_type)
    stmt = stmt.order_by(count.desc(), DeadLetter.task_name).limit(limit)
    with store.session() as session:
        rows = session.execute(stmt).all()
    return [{"task_name": task, "exc_type": exc, "count": int(n),
             "last_failed_at": _iso(last), "sample": (sample or "")[:300]}
            for task, exc, n, last, sample in rows]


def priorities_of(store: DeadLetterStore, ids: list[int]) -> dict[str, int]:
    """How many of `ids` have each priority (what a confirmation weighs against the gate)."""
    counts: Counter[str] = Counter()
    with store.session() as session:
        for i in range(0, len(ids), CHUNK):
            stmt = (select(DeadLetter.priority, func.count(DeadLetter.id))
                    .where(DeadLetter.id.in_(ids[i:i + CHUNK])).group_by(DeadLetter.priority))
            counts.update({str(p): int(n) for p, n in session.execute(stmt).all()})
    return dict(counts)


def _iso(value: Any) -> str | None:
    if isinstance(value, str):  # SQLite may hand an aggregate back as text
        value = dt.datetime.fromisoformat(value)
    return as_utc(value).isoformat() if isinstance(value, dt.datetime) else None


@dataclass(slots=True, kw_only=True)
class BulkResult:
    """What a bulk action did: how many were asked for, the outcome counts, why the gate
    shed those it shed, and a few of the other refusals."""

    action: str
    requested: int
    counts: Counter[str] = field(default_factory=Counter)
    shed: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def note(self, outcome: ReplayOutcome) -> None:
        """`replay_many`'s progress callback."""
        if outcome.outcome is ReplayResult.REJECTED:
            self.shed[outcome.reason or "?"] += 1
        elif outcome.outcome is not ReplayResult.REPLAYED and len(self.examples) < 5:
            self.examples.append(outcome.reason or outcome.outcome.value)

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "requested": self.requested,
                "counts": dict(self.counts), "shed": dict(self.shed),
                "examples": list(self.examples)}


def replay_bulk(store: DeadLetterStore, producer: Producer, ids: list[int]) -> BulkResult:
    """Replay `ids` through the gate with `dlq.replay.replay_many` (rows the gate sheds stay
    as they were, with the reason noted)."""
    result = BulkResult(action="replay", requested=len(ids))
    result.counts.update(replay_many(store, producer, ids, result.note))
    return result


def discard_bulk(store: DeadLetterStore, ids: list[int]) -> BulkResult:
    """Mark `ids` discarded (only pending or exhausted rows change)."""
    result = BulkResult(action="discard", requested=len(ids))
    result.counts[Status.DISCARDED.value] = store.discard(ids)
    return result
