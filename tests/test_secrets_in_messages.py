"""Secrets never leave a job in clear in what Celery prints: the first message and every
message Celery itself sends for a Sluice task (a retry's), whatever Flower shows."""

from __future__ import annotations

import json

from producers import submit
from sluice.app import app
from sluice.settings import get_settings
from tests.conftest import Env

CANARY = "canary-5e1b"
EMAIL = {"to": "a@b.io", "subject": "s", "smtp_password": CANARY}


def _queued(env: Env, queue: str) -> list[dict[str, object]]:
    return [json.loads(m) for m in env.client.lrange(queue, 0, -1)]


def test_the_submitted_message_prints_secrets_masked(sluice_env: Env) -> None:
    submit("email.send", EMAIL)
    [message] = _queued(sluice_env, "high")
    assert CANARY not in message["headers"]["argsrepr"]  # type: ignore[index]
    assert "***" in message["headers"]["argsrepr"]  # type: ignore[index]


def test_a_message_celery_sends_itself_prints_secrets_masked(sluice_env: Env) -> None:
    """What `Task.retry` does: apply_async without the first message's argsrepr."""
    app.loader.import_default_modules()
    with app.connection_for_write(get_settings().redis_url.get_secret_value()) as conn:
        app.tasks["email.send"].apply_async(args=[EMAIL], queue="high", connection=conn)
    for message in _queued(sluice_env, "high"):
        headers = message["headers"]
        assert CANARY not in headers["argsrepr"] + headers["kwargsrepr"]  # type: ignore[index,operator]
