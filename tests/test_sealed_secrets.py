"""Secret fields travel sealed: encrypted by the producer, opened only inside the task, so
Redis, the ledger, the outbox, the spool, dead-letter rows and logs hold ciphertext or `***`.
A replay opens them again; key rotation keeps old rows readable and `doctor` names them."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sqlite3
import uuid
from pathlib import Path

import pytest
import redis
from cryptography.fernet import Fernet
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, SecretStr

from delivery.outbox import outbox_size
from dlq.replay import replay_one
from dlq.store import DeadLetterStore
from ops.doctor import run_checks
from producers import default_producer, submit
from sluice.errors import SecretKeyMissing
from sluice.message import SECRET, mask_secrets
from sluice.sealed import PREFIX, seal_secrets, stale_seal, unseal_secrets
from sluice.settings import get_settings
from tests.conftest import Env, Processes, _make_env, reset_all
from tests.services import RedisServer, wait_for
from workers import effects


def _canary() -> str:
    return f"canary-{uuid.uuid4().hex}"


def _fp(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def _everything_in_redis(client: redis.Redis) -> str:
    """Every value of every key, as text: what an attacker with the Redis data would see."""
    out = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        value = {"string": client.get, "list": lambda k: client.lrange(k, 0, -1),
                 "hash": client.hgetall, "set": client.smembers,
                 "zset": lambda k: client.zrange(k, 0, -1)}.get(kind, lambda k: b"")(key)
        out.append(f"{key!r} {value!r}")
    text = "\n".join(out)
    # kombu base64-encodes message bodies: read them as a worker would
    bodies = [base64.b64decode(b).decode(errors="replace")
              for b in re.findall(r'\\?"body\\?": \\?"([A-Za-z0-9+/=]+)', text)]
    return "\n".join([text, *bodies])


def _everything_in_sqlite(url: str) -> str:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        return "\n".join(str(line) for line in conn.iterdump())


def test_a_task_with_secret_fields_is_refused_without_a_key_and_nothing_is_sent(
        sluice_env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_SECRET_KEY", "")
    get_settings.cache_clear()
    with pytest.raises(SecretKeyMissing, match="SLUICE_SECRET_KEY") as info:
        submit("email.send", {"to": "a@b.io", "subject": "s", "smtp_password": "pw"})
    assert "email.send" in str(info.value)
    assert sluice_env.client.llen("high") == 0
    submit("data.sync", {"source": "s", "destination": "d"})  # no secret fields: fine


def test_secrets_sit_sealed_in_the_queue_the_ledger_and_the_outbox(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = RedisServer(tmp_path / "own-redis").start()
    env = _make_env(server, f"sqlite:///{tmp_path / 'sluice.db'}", tmp_path, monkeypatch)
    try:
        canary = _canary()
        submit("email.send", {"to": "a@b.io", "subject": "s", "smtp_password": canary})
        everything = _everything_in_redis(env.client)
        assert PREFIX in everything and "smtp_password" in everything  # the body was read
        assert canary not in everything
        producer = default_producer()
        producer.start()
        server.stop()
        wait_for(lambda: producer.monitor.current().level.name == "UNKNOWN", what="UNKNOWN")
        receipt = submit("auth.event", {"user_id": "u", "kind": "login",
                                        "session_token": canary})
        assert receipt.outboxed and outbox_size() == 1
        assert canary not in _everything_in_sqlite(env.database_url)
    finally:
        reset_all()
        server.stop()


def test_secrets_are_opened_in_the_task_and_by_a_replay_and_stored_nowhere_in_clear(
        sluice_env: Env, processes: Processes) -> None:
    """The canary test: one password through a delivery, a dead letter and its replay, then
    every store the platform writes is searched for it."""
    canary = _canary()
    worker = processes.worker()
    submit("email.send", {"to": "ok@example.com", "subject": "s", "smtp_password": canary})
    submit("email.send", {"to": "bob@example.invalid", "subject": "s",
                          "smtp_password": canary}, tenant="acme")
    store = DeadLetterStore()
    wait_for(lambda: store.list(), what="the refused email dead-lettered")
    [row] = store.list()
    assert row.payload["smtp_password"] == "***" and canary not in (row.sealed or "")
    assert row.tenant == "acme"  # and its replay keeps it
    assert replay_one(store, default_producer(), row.id).outcome.value == "replayed"
    wait_for(lambda: len(effects.read("email")) == 3, what="the replay ran")
    assert [e["smtp_auth"] for e in effects.read("email")] == [_fp(canary)] * 3
    worker.stop()
    assert canary not in _everything_in_redis(sluice_env.client)
    assert canary not in _everything_in_sqlite(sluice_env.database_url)
    assert canary not in worker.log.read_text()
    for path in sluice_env.tmp.rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), path


def test_rotation_old_keys_still_open_and_doctor_names_rows_under_them(
        sluice_env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    old = get_settings().secret_key.get_secret_value()
    from workers.tasks.email import Email

    sealed = seal_secrets("email.send", Email, {"to": "a@b.io", "subject": "s",
                                                "smtp_password": "pw"})
    store = DeadLetterStore()
    from tests.test_dlq_store import rec  # one dead letter, as the worker records it

    store.record(rec("t-old", payload={"to": "a@b.io", "smtp_password": "***"},
                     sealed=json.dumps(sealed)))
    monkeypatch.setenv("SLUICE_SECRET_KEY", f"{Fernet.generate_key().decode()},{old}")
    get_settings.cache_clear()
    assert unseal_secrets(Email, sealed)["smtp_password"] == "pw"
    assert stale_seal(json.dumps(sealed))
    [check] = [c for c in run_checks() if c["check"] == "secrets"]
    assert not check["ok"] and "1 dead letter(s) sealed under an old key" in check["detail"]
    assert not stale_seal(json.dumps(seal_secrets("email.send", Email, {
        "to": "a@b.io", "subject": "s", "smtp_password": "pw"})))


class Inner(BaseModel):
    token: SecretStr
    note: str = ""


class Outer(BaseModel):
    name: str
    creds: list[Inner] = []
    api_key: str | None = Field(None, json_schema_extra=SECRET)
    by_name: dict[str, Inner] = {}


_BASE64 = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")


@settings(max_examples=50, deadline=None)
@given(secret=st.text(min_size=6, alphabet=st.characters(codec="utf-8",
                                                          exclude_categories=("Cs",))),
       n=st.integers(0, 3))
def test_no_secret_survives_sealing_and_each_comes_back(secret: str, n: int) -> None:
    payload = {"name": "x", "api_key": secret,
               "creds": [{"token": secret, "note": "n"}] * n,
               "by_name": {f"k{i}": {"token": secret} for i in range(n)}}
    needle = json.dumps(secret)[1:-1]
    assume(needle not in json.dumps(mask_secrets(Outer, payload)))  # not a key name
    assume(not set(secret) <= _BASE64)  # could turn up inside a token by chance
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLUICE_SECRET_KEY", Fernet.generate_key().decode())
        get_settings.cache_clear()
        sealed = seal_secrets("t", Outer, payload)
        assert needle not in json.dumps(sealed)
        assert unseal_secrets(Outer, sealed) == payload
        Outer.model_validate(unseal_secrets(Outer, sealed))
    get_settings.cache_clear()
