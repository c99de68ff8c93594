"""The metrics scrape reads queues that anyone can write to: it must survive what it finds."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ops.metrics import SluiceCollector
from tests.conftest import Env


@pytest.mark.parametrize("submitted", ["yesterday", None, [], "nan", 1e400])
def test_one_bad_message_does_not_break_the_metrics_scrape(sluice_env: Env,
                                                           submitted: object) -> None:
    sluice_env.client.lpush("normal", json.dumps({"headers": {"sluice_submitted_at":
                                                              submitted}}))
    registry = CollectorRegistry()
    registry.register(SluiceCollector())
    text = generate_latest(registry).decode()
    assert 'sluice_queue_depth{queue="normal"} 1.0' in text
    assert 'sluice_oldest_job_age_seconds{queue="normal"} 0.0' in text
