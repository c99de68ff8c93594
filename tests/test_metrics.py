"""The metrics scrape reads queues that anyone can write to: it must survive what it finds.
And a scrape is served from memory: figures are computed on a timer, never per scrape."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from dlq.store import DeadLetterStore
from ops.metrics import SluiceCollector
from tests.conftest import Env
from tests.services import wait_for
from tests.test_dlq_store import rec


def _scrape(collector: SluiceCollector) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


@pytest.mark.parametrize("submitted", ["yesterday", None, [], "nan", 1e400])
def test_one_bad_message_does_not_break_the_metrics_scrape(sluice_env: Env,
                                                           submitted: object) -> None:
    sluice_env.client.lpush("normal", json.dumps({"headers": {"sluice_submitted_at":
                                                              submitted}}))
    text = _scrape(SluiceCollector(background=False))
    assert 'sluice_queue_depth{queue="normal"} 1.0' in text
    assert 'sluice_oldest_job_age_seconds{queue="normal"} 0.0' in text


def test_a_scrape_serves_the_last_refresh_and_touches_nothing(sluice_env: Env) -> None:
    collector = SluiceCollector(background=False)
    collector.refresh(now=1_000.0)
    before = _scrape(collector)
    assert 'sluice_dead_letters{status="pending"} 0.0' in before
    assert "sluice_metrics_refreshed_timestamp_seconds 1000.0" in before
    DeadLetterStore().record_many([rec("m1")])
    sluice_env.client.lpush("low", b"x")
    # had a scrape read Redis or the database, it would see the new row and the new job
    assert _scrape(collector) == before
    collector.refresh(now=1_005.0)
    after = _scrape(collector)
    assert 'sluice_dead_letters{status="pending"} 1.0' in after
    assert 'sluice_queue_depth{queue="low"} 1.0' in after


def test_the_figures_refresh_on_their_own(sluice_env: Env) -> None:
    collector = SluiceCollector(interval=0.05)
    try:
        assert 'sluice_queue_depth{queue="high"} 0.0' in _scrape(collector)
        sluice_env.client.lpush("high", b"x", b"y")
        wait_for(lambda: 'sluice_queue_depth{queue="high"} 2.0' in _scrape(collector),
                 timeout=5, what="a refresh by the collector's thread")
    finally:
        collector.close()
