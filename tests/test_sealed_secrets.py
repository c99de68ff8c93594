"""Secret fields travel sealed: encrypted by the producer, opened only inside the task, so
Redis, the ledger, the outbox, the spool, dead-letter rows, retries, task events, logs and the
CLI's output hold ciphertext or `***`. A replay opens them again; key rotation keeps old rows
readable and `doctor` names them."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography.fernet import Fernet
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, SecretStr

from delivery.outbox import outbox_size
from delivery.sending import announce_monitor
from delivery.spool import spool_sizes
from dlq.drain import drain_spool
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


def test_a_secret_value_is_refused_without_a_key_and_nothing_is_sent(
        sluice_env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_SECRET_KEY", "")
    get_settings.cache_clear()
    with pytest.raises(SecretKeyMissing, match="SLUICE_SECRET_KEY") as info:
        submit("email.send", {"to": "a@b.io", "subject": "s", "smtp_password": "pw"})
    assert "email.send" in str(info.value)
    assert sluice_env.client.llen("high") == 0
    submit("email.send", {"to": "a@b.io", "subject": "s"})  # no secret value: nothing to seal
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



class _Events:
    """A Flower-like client: every Celery event on the broker, decoded as Flower gets them
    (a `celery.events.Receiver` on the `celeryev` exchange), captured by a thread."""

    def __init__(self, url: str) -> None:
        from sluice.app import app

        self.app, self.url = app, url
        self.seen: list[dict[str, Any]] = []
        self._conn = app.connection_for_read(url)
        self._receiver = app.events.Receiver(self._conn, handlers={"*": self.seen.append})
        self._thread = threading.Thread(target=self._receiver.capture, daemon=True,
                                        kwargs={"limit": None, "timeout": None,
                                                "wakeup": False})

    def start(self, worker: str) -> _Events:
        """Listen, switch `worker`'s task events on (as Flower does), and return once an
        event of that worker came through: none sent from now on is missed."""
        self._thread.start()
        with self.app.connection_for_write(self.url) as conn:
            def heard() -> bool:
                self.app.control.enable_events(destination=[worker], connection=conn)
                self.app.control.heartbeat(destination=[worker], connection=conn)
                return any(e.get("hostname") == worker for e in self.seen)
            wait_for(heard, interval=0.2, what=f"task events of {worker}")
        return self

    def stop(self) -> None:
        self._receiver.should_stop = True
        self._thread.join(10)
        self._conn.release()

    def of(self, task_id: str, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.seen if e.get("uuid") == task_id and e["type"] == kind]


@contextmanager
def _store_down(database_url: str) -> Iterator[None]:
    """The dead-letter store refuses every write (its table is gone) until the block ends:
    what a worker's recorder sees when the database is down, without stopping a server."""
    path = database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE dead_letters RENAME TO dead_letters_away")
    try:
        yield
    finally:
        with sqlite3.connect(path) as db:
            db.execute("ALTER TABLE dead_letters_away RENAME TO dead_letters")


def _flaky_attempts(task_id: str) -> list[dict[str, Any]]:
    return [e for e in effects.read("flaky") if e["task_id"] == task_id]


def _cli_json(env: Env, *args: str) -> tuple[str, Any]:
    """One `sluice ... --json` run, as a user runs it: (everything it printed, the JSON)."""
    from tests.test_cli import sluice

    out = sluice(env, *args, "--json")
    assert out.returncode == 0, (args, out.stdout[-500:], out.stderr[-2000:])
    return out.stdout + out.stderr, json.loads(out.stdout)


def test_secrets_stay_sealed_through_retries_the_spool_task_events_and_the_cli(
        sluice_env: Env, processes: Processes) -> None:
    """The canary test, continued: a job that retries, then succeeds; one that retries until
    it dead-letters while the database is down (into the spool), drained, replayed from the
    CLI and exhausted again; a Flower-like client records every task event meanwhile. Every
    attempt opens the canary; no event, no `--json` output and no store holds it in clear."""
    canary = _canary()
    name = f"w-{uuid.uuid4().hex[:6]}@test"
    worker = processes.worker(name=name, retry_backoff_base="0")  # retries at once
    events = _Events(sluice_env.redis.url).start(name)
    announce_monitor(sluice_env.client, 60)  # as a running Flower does: jobs send task-sent
    spool, store = get_settings().spool_path, DeadLetterStore()
    try:
        retried = submit("demo.flaky", {"fail_times": 2, "token": canary})
        with _store_down(sluice_env.database_url):
            dead = submit("demo.flaky", {"fail_times": 100, "token": canary})
            wait_for(lambda: spool_sizes(sluice_env.client, spool)["file"] == 1, timeout=30,
                     what="the exhausted job spooled")
        [spooled] = [json.loads(line) for line in spool.read_text().splitlines()]
        assert (spooled["task_id"], spooled["attempts"]) == (dead.task_id, 6)  # 5 retries
        assert spooled["payload"]["token"] == "***" and PREFIX in spooled["sealed"]
        assert drain_spool(store, sluice_env.client, spool).stored == 1
        row = store.get_by_task_id(dead.task_id)
        outputs = [_cli_json(sluice_env, "dlq", "replay", str(row.id))]
        [replayed] = outputs[0][1]
        assert replayed["outcome"] == "replayed"
        wait_for(lambda: store.get(row.id).generation == 1, timeout=30,
                 what="the replay exhausted its retries too")
        outputs += [_cli_json(sluice_env, "dlq", *args)
                    for args in (["ls"], ["show", str(row.id)], ["stats"])]
        assert [r["id"] for r in outputs[1][1]] == [row.id]
        assert outputs[2][1][0]["payload"]["token"] == "***"
        assert not [text for text, _ in outputs if canary in text]
    finally:
        events.stop()
    worker.stop()

    attempts = [_flaky_attempts(t) for t in (retried.task_id, dead.task_id,
                                              replayed["task_id"])]
    assert [len(a) for a in attempts] == [3, 6, 6]
    assert {e["token"] for a in attempts for e in a} == {_fp(canary)}  # opened each time
    # what a Flower shows: the job sent (with its queue), each delivery, each retry
    assert [e["queue"] for e in events.of(dead.task_id, "task-sent")] == ["normal"]
    assert len(events.of(retried.task_id, "task-retried")) == 2
    received = events.of(dead.task_id, "task-received")
    assert len(received) == 6 and all("'token': '***'" in e["args"] for e in received)
    assert canary not in json.dumps(events.seen, default=str)
    assert canary not in _everything_in_redis(sluice_env.client)
    assert canary not in _everything_in_sqlite(sluice_env.database_url)
    assert canary not in worker.log.read_text()
    for path in sluice_env.tmp.rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), path
