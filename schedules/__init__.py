"""The beat schedule and its jobs (reconcile, retry-dead-letters, purge-dead-letters), the
application schedules of `SLUICE_SCHEDULES_FILE` (`definitions`, `timing`, `firing`,
`trigger`: fired by beat through the gate), plus the operational read-outs built on them
(doctor, metrics, schedule status)."""

__all__ = ["build_schedule", "JOBS"]

from schedules.beat import JOBS, build_schedule
