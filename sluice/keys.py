"""Every Redis key and channel name Sluice uses, in one place (as arq's constants.py)."""

from __future__ import annotations

import enum

PREFIX = "sluice:"

#: pub/sub channel of `pressure_change` events.
PRESSURE_CHANNEL = PREFIX + "pressure"
#: hash: the latest pressure snapshot written by a monitor (for `sluice pressure`, metrics).
PRESSURE_STATE = PREFIX + "pressure:state"
#: hash field -> reason: switched-off priorities (`priority:LOW`) and tasks (`task:email.send`).
KILL_SWITCHES = PREFIX + "killswitch"
#: list: dead letters spooled while the database is unavailable.
DLQ_SPOOL = PREFIX + "dlq:spool"
#: hash of counters: submissions by `PRIORITY:outcome` (`submission_field`), shared by
#: every producer.
SUBMISSIONS = PREFIX + "stats:submissions"


class SubmitOutcome(enum.StrEnum):
    """What happened to one submission, as counted in `SUBMISSIONS`."""

    ACCEPTED = "accepted"  #: sent at once
    DELAYED = "delayed"  #: sent after the gate's delay
    SHED = "shed"  #: refused by the gate for room or time (pressure, deadline)
    QUOTA = "quota"  #: refused for a tenant over its fair share
    UNAVAILABLE = "unavailable"  #: refused because Redis could not be reached
    KILLED = "killed"  #: refused by a kill switch
    DUPLICATE = "duplicate"  #: its idempotency key was taken: nothing sent
    OUTBOXED = "outboxed"  #: kept in the CRITICAL outbox until Redis answers


def submission_field(priority: str, outcome: SubmitOutcome) -> str:
    """The `SUBMISSIONS` field counting `outcome` for `priority` (a priority name)."""
    return f"{priority}:{outcome.value}"


def parse_submission_field(field: str) -> tuple[str, str]:
    """(priority name, outcome) of a `SUBMISSIONS` field."""
    priority, _, outcome = field.partition(":")
    return priority, outcome
#: hash of counters: pressure level changes by the level entered.
PRESSURE_CHANGES = PREFIX + "stats:pressure_changes"
#: set: hostnames of the workers that hold (or held) messages (`delivery.recovery`).
HOLDERS = PREFIX + "holders"
#: hash of counters: messages put back on their queues from dead workers, by queue.
RECOVERED = PREFIX + "stats:recovered"
#: lock held by the one worker recovering dead workers' messages at a time.
RECOVERY_LOCK = PREFIX + "lock:recovery"


def alive(hostname: str) -> str:
    """A worker's liveness key (epoch of its last heartbeat), expiring after the TTL."""
    return f"{PREFIX}alive:{hostname}"


def held(hostname: str) -> str:
    """Set: the delivery tags of the messages `hostname` holds (kombu's unacked entries)."""
    return f"{PREFIX}held:{hostname}"


#: counter: jobs started, by every worker (the monitor turns it into a drain rate).
STARTED = PREFIX + "stats:started"
#: hash of counters: retries by task name.
RETRIES = PREFIX + "stats:retries"
#: hash of counters: expired (dropped stale) jobs by task name.
EXPIRED = PREFIX + "stats:expired"
#: hash: per schedule job, a JSON record of its runs.
SCHEDULE_RUNS = PREFIX + "schedule:runs"
#: prefix of redbeat's own keys.
REDBEAT_PREFIX = PREFIX + "redbeat:"


def idempotency(key: str) -> str:
    """Holds the task id first submitted with idempotency key `key` (24 h)."""
    return f"{PREFIX}idem:{key}"


def fence(task_id: str) -> str:
    """Set when a send of `task_id` whose outcome was unknown was settled as not sent: a late
    arrival of that send is then a no-op (see `delivery.sending`)."""
    return f"{PREFIX}fence:{task_id}"


def done(key: str) -> str:
    """Set once a job submitted with idempotency key `key` has applied its effect."""
    return f"{PREFIX}done:{key}"


def worker_state(hostname: str) -> str:
    """A worker's readiness state (`ready`, `shutting down`), with a TTL as a heartbeat."""
    return f"{PREFIX}worker:{hostname}"


def waits(priority: str) -> str:
    """List of `started_at:wait_s` samples for `priority` (only with SLUICE_RECORD_WAITS)."""
    return f"{PREFIX}stats:waits:{priority}"

#: kombu's own keys for messages delivered but not yet acked (hash) and their delivery time.
KOMBU_UNACKED = "unacked"
KOMBU_UNACKED_INDEX = "unacked_index"
#: lock held while the dead-letter spool is drained (two drains must not trim each other).
DRAIN_LOCK = PREFIX + "lock:drain"
#: hash: the last stuck-job report of the reconcile job.
STUCK = PREFIX + "stuck"

#: The ledger of accepted jobs not yet started: hash task id -> {"q": queue, "m": message},
#: and a sorted set task id -> when it was (re)sent. See `delivery.ledger`.
LEDGER = PREFIX + "ledger"
LEDGER_AT = PREFIX + "ledger:at"
#: hash task id -> when a ledger entry was first seen neither queued nor reserved.
LEDGER_SUSPECTS = PREFIX + "ledger:suspects"

#: set: ids of the dead-letter spool drains under way (`delivery.spool`). Each drain moves the
#: items it takes into its own processing list and holds a lease while it works on them; a
#: later drain takes over the list of a drain whose lease has expired (it died).
DLQ_SPOOL_DRAINS = PREFIX + "dlq:spool:drains"


def dlq_spool_processing(drain_id: str) -> str:
    """List: the spooled dead letters drain `drain_id` has taken and not yet stored."""
    return f"{PREFIX}dlq:spool:processing:{drain_id}"


def dlq_spool_lease(drain_id: str) -> str:
    """Set, with a TTL renewed per batch, while drain `drain_id` is alive."""
    return f"{PREFIX}dlq:spool:lease:{drain_id}"

#: hash: per application schedule (`SLUICE_SCHEDULES_FILE`), `<name>:<field>` -> its last
#: tick dealt with, counters (runs, sheds, duplicates, skipped) and its last firing (JSON).
APP_SCHEDULES = PREFIX + "schedule:app"


def workflow(workflow_id: str) -> str:
    """Hash: one workflow's steps (`spec`), each step's state (`step:<i>`) and the dict each
    step returned (`result:<i>`, what the next step may merge). See `producers.workflow`."""
    return f"{PREFIX}workflow:{workflow_id}"


def workflow_task(task_id: str) -> str:
    """`<workflow id>:<step index>` of the job `task_id` (found again when it dead-letters)."""
    return f"{PREFIX}workflow:task:{task_id}"


def tenant_window(index: int) -> str:
    """Hash of per-tenant submission counters for one fairness window (`int(now // 2 s)`):
    one key per window, expiring after a few, never one per tenant or per job."""
    return f"{PREFIX}tenants:{index}"


def tenant_field(priority: str, tenant: str, *, offered: bool) -> str:
    """The `tenant_window` field counting `tenant`'s offered (or accepted) jobs."""
    return f"{'o' if offered else 'a'}:{priority}:{tenant}"


def parse_tenant_field(field: str) -> tuple[str, str, bool]:
    """(priority name, tenant, offered?) of a `tenant_window` field."""
    kind, priority, tenant = field.split(":", 2)
    return priority, tenant, kind == "o"


#: set (with a TTL) while a Flower runs: then the send script also publishes `task-sent`
MONITOR_KEY = PREFIX + "monitor:task-sent"

#: list of the server's audited operator actions, newest first, trimmed
SERVER_AUDIT = PREFIX + "server:audit"
