"""Prometheus metrics for the whole deployment, computed on a timer from Redis and SQL and
served from memory.

Counters that producers and workers keep in Redis hashes (submissions by priority and
outcome, retries by task) are exported as they are, so one endpoint shows every process.
A scrape never touches Redis, the database or the spool file: a daemon thread recomputes
every figure each `REFRESH_S` seconds and a scrape serves the last ones, so scraping often
(or by anyone who can reach the port) costs nothing; `sluice_metrics_refreshed_timestamp_seconds`
says how fresh they are.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from delivery.outbox import outbox_size
from delivery.spool import spool_sizes
from dlq.store import DeadLetterStore
from sluice import keys
from sluice.connections import redis_client, text, texts
from sluice.message import waited
from sluice.priorities import QUEUES, PressureLevel
from sluice.settings import get_settings

__all__ = ["SluiceCollector", "oldest_age", "REFRESH_S"]

log = logging.getLogger("sluice.metrics")

#: Seconds between two computations of the figures (a scrape serves the last ones).
REFRESH_S = 5.0


def oldest_age(client: redis.Redis, queue: str, now: float) -> float:
    """Seconds the oldest waiting job of `queue` has waited (0 when empty).

    Producers LPUSH and workers BRPOP, so the oldest job is the list's last element."""
    return waited(client.lindex(queue, -1), now)


class SluiceCollector(Collector):
    """Serves the figures of the last refresh. The first is computed here, so a collector
    built now shows the state of now (`sluice metrics --once`); then, with `background`, a
    daemon thread recomputes them every `interval` seconds until `close`."""

    def __init__(self, interval: float = REFRESH_S, *, background: bool = True) -> None:
        self.interval = interval
        self._stopped = threading.Event()
        self._families: list[Metric] = []
        self.refresh()
        if background:
            threading.Thread(target=self._run, name="sluice-metrics", daemon=True).start()

    def collect(self) -> Iterator[Metric]:
        """The last figures: no I/O."""
        return iter(self._families)

    def refresh(self, now: float | None = None) -> None:
        """Compute every figure now; scrapes serve them from then on."""
        now = time.time() if now is None else now
        families = list(self._compute(now))
        families.append(GaugeMetricFamily(
            "sluice_metrics_refreshed_timestamp_seconds",
            "When these figures were computed (Unix time): alert if it stops moving",
            value=now))
        self._families = families  # one swap: a scrape sees the old list or the new one

    def close(self) -> None:
        """Stop the refreshing thread (the figures stay as they are)."""
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.refresh()
            except Exception:  # a bug must not stop the refreshes: serve the last figures
                log.exception("metrics refresh failed; serving the previous figures")

    def _compute(self, now: float) -> Iterator[Any]:
        client = redis_client()
        try:
            yield from self._redis_metrics(client, now)
        except redis.RedisError:
            yield GaugeMetricFamily("sluice_pressure_level", "Pressure level (9 = UNKNOWN)",
                                    value=PressureLevel.UNKNOWN.value)
        yield from self._store_metrics(client)

    def _redis_metrics(self, client: redis.Redis, now: float) -> Iterator[Any]:
        depth = GaugeMetricFamily("sluice_queue_depth", "Jobs waiting", labels=["queue"])
        age = GaugeMetricFamily("sluice_oldest_job_age_seconds",
                                "Age of the oldest waiting job", labels=["queue"])
        lengths = {q: int(client.llen(q)) for q in QUEUES}
        for q in QUEUES:
            depth.add_metric([q], lengths[q])
            age.add_metric([q], oldest_age(client, q, now))
        yield depth
        yield age
        yield self._level(client, sum(lengths.values()))
        subs = CounterMetricFamily("sluice_submissions", "Submissions by priority and outcome",
                                   labels=["priority", "outcome"])
        for name, n in client.hgetall(keys.SUBMISSIONS).items():
            priority, outcome = keys.parse_submission_field(text(name))
            subs.add_metric([priority, outcome], int(n))
        yield subs
        for key, metric, doc, label in (
                (keys.RETRIES, "sluice_retries", "Retries by task", "task"),
                (keys.EXPIRED, "sluice_expired", "Expired jobs by task", "task"),
                (keys.RECOVERED, "sluice_recovered", "Jobs put back on their queue from dead "
                 "workers, by queue", "queue"),
                (keys.PRESSURE_CHANGES, "sluice_pressure_changes", "Level changes by the "
                 "level entered", "level")):
            fam = CounterMetricFamily(metric, doc, labels=[label])
            for name, n in client.hgetall(key).items():
                fam.add_metric([text(name)], int(n))
            yield fam
        yield from self._deadline_metrics(client)
        yield from self._tenant_metrics(client, now)
        stuck = GaugeMetricFamily("sluice_stuck_jobs", "Jobs reserved too long",
                                  labels=["kind"])
        for kind, n in texts(client.hgetall(keys.STUCK)).items():
            stuck.add_metric([kind], int(n))
        yield stuck

    def _deadline_metrics(self, client: redis.Redis) -> Iterator[Any]:
        """The producers' drain rate and predicted waits (the signal to autoscale on: when
        CRITICAL's predicted wait grows, only more workers help)."""
        state = texts(client.hgetall(keys.PRESSURE_STATE))
        rate = float(state.get("drain_rate", -1))
        if rate >= 0:
            yield GaugeMetricFamily("sluice_drain_rate", "Jobs started per second (smoothed)",
                                    value=rate)
        waits = GaugeMetricFamily("sluice_predicted_wait_seconds",
                                  "Predicted wait before a job submitted now starts",
                                  labels=["priority"])
        for name, value in state.items():
            if name.startswith("wait:"):
                waits.add_metric([name.removeprefix("wait:")], float(value))
        yield waits

    def _tenant_metrics(self, client: redis.Redis, now: float) -> Iterator[Any]:
        """Jobs/s offered and accepted per tenant and priority over the last seconds: the
        busiest `TOP_TENANTS`, the rest as `(others)` (bounded label cardinality)."""
        from producers.fairness import TOP_TENANTS, WINDOW_S, busiest
        from producers.monitor import tenant_rates

        window = int(now // WINDOW_S)
        rates = tenant_rates(texts(client.hgetall(keys.tenant_window(window - 1))),
                             texts(client.hgetall(keys.tenant_window(window))),
                             now - window * WINDOW_S)
        offered = GaugeMetricFamily("sluice_tenant_offered_per_second",
                                    "Submissions per second by tenant (top tenants)",
                                    labels=["priority", "tenant"])
        accepted = GaugeMetricFamily("sluice_tenant_accepted_per_second",
                                     "Accepted submissions per second by tenant (top tenants)",
                                     labels=["priority", "tenant"])
        for priority, per_tenant in rates.items():
            for tenant, n_offered, n_accepted in busiest(per_tenant, TOP_TENANTS):
                offered.add_metric([priority, tenant], round(n_offered, 3))
                accepted.add_metric([priority, tenant], round(n_accepted, 3))
        yield offered
        yield accepted

    def _level(self, client: redis.Redis, depth: int) -> GaugeMetricFamily:
        state = client.hgetall(keys.PRESSURE_STATE)
        name = text(state.get(b"level", b""))
        if name not in PressureLevel.__members__:
            from producers.pressure import Thresholds, raw_level

            name = raw_level(depth, Thresholds.from_settings(get_settings())).name
        return GaugeMetricFamily("sluice_pressure_level",
                                 "Pressure level: 0 NORMAL, 1 WARNING, 2 CRITICAL, 3 SHED, 9 UNKNOWN",
                                 value=PressureLevel[name].value)

    def _store_metrics(self, client: redis.Redis) -> Iterator[Any]:
        settings = get_settings()
        sizes = spool_sizes(client, settings.spool_path)
        spool = GaugeMetricFamily("sluice_spool_size", "Dead letters waiting in a spool",
                                  labels=["where"])
        for where, n in sizes.items():
            if n is not None:
                spool.add_metric([where], n)
        yield spool
        try:
            by_status = DeadLetterStore().stats()["by_status"]
            outbox = outbox_size()
        except SQLAlchemyError:
            return
        dead = GaugeMetricFamily("sluice_dead_letters", "Dead letters by status",
                                 labels=["status"])
        for status in ("pending", "replayed", "discarded", "exhausted"):
            dead.add_metric([status], by_status.get(status, 0))
        yield dead
        yield GaugeMetricFamily("sluice_outbox_size", "CRITICAL jobs waiting in the outbox",
                                value=outbox)
