"""Settings: defaults load, and each inconsistency fails naming the setting to fix."""

from __future__ import annotations

import pytest

from sluice.errors import ConfigError
from sluice.settings import load_settings


def test_defaults_are_consistent(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in __import__("os").environ if k.startswith("SLUICE_")]:
        monkeypatch.delenv(key)
    s = load_settings()
    assert s.thresholds == (500, 1000, 5000)
    assert s.retry_backoff_max + s.task_time_limit < s.visibility_timeout


@pytest.mark.parametrize("env, named", [
    ({"SLUICE_PRESSURE_WARNING": "1000", "SLUICE_PRESSURE_CRITICAL": "900"},
     "SLUICE_PRESSURE_WARNING"),
    ({"SLUICE_PRESSURE_CRITICAL": "6000"}, "SLUICE_PRESSURE_CRITICAL"),
    ({"SLUICE_PRESSURE_SHED": "1000"}, "SLUICE_PRESSURE_SHED"),
    ({"SLUICE_RETRY_BACKOFF_MAX": "3400"}, "SLUICE_VISIBILITY_TIMEOUT"),
    ({"SLUICE_VISIBILITY_TIMEOUT": "300"}, "SLUICE_RETRY_BACKOFF_MAX"),
    ({"SLUICE_TASK_TIME_LIMIT": "100"}, "SLUICE_TASK_SOFT_TIME_LIMIT"),
    ({"SLUICE_PRESSURE_WARNING": "lots"}, "SLUICE_PRESSURE_WARNING"),
    ({"SLUICE_PRESSURE_MARGIN": "1.5"}, "SLUICE_PRESSURE_MARGIN"),
    ({"SLUICE_REDIS_URL": "http://localhost"}, "SLUICE_REDIS_URL"),
    ({"SLUICE_REDIS_URL": "rediss://h:6380/0?ssl_cert_reqs=none"}, "SLUICE_REDIS_URL"),
])
def test_inconsistent_settings_name_the_setting(monkeypatch: pytest.MonkeyPatch,
                                                 env: dict[str, str], named: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert named in str(info.value)


def test_secrets_are_masked_in_the_printable_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_REDIS_URL", "redis://:hunter2@127.0.0.1:6379/0")
    monkeypatch.setenv("SLUICE_DATABASE_URL", "postgresql://u:s3cret@db/sluice")
    s = load_settings()
    text = repr(s) + str(s.safe_dict())
    assert "hunter2" not in text and "s3cret" not in text
    assert s.safe_dict()["redis_url"] == "redis://:***@127.0.0.1:6379/0"


def test_rediss_requires_certificates() -> None:
    from sluice.app import celery_config

    s = load_settings(redis_url="rediss://127.0.0.1:6380/0")
    import ssl

    assert celery_config(s)["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def test_app_is_json_only_with_strict_queues() -> None:
    from sluice.app import app

    conf = app.conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert [q.name for q in conf.task_queues] == ["critical", "high", "normal", "low"]
    assert conf.broker_transport_options["queue_order_strategy"] == "priority"
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.broker_transport_options["visibility_timeout"] > 0
