"""`sluice server` in process: the API and the console through Starlette's TestClient (httpx),
against the real Redis and stores of the fixtures. No worker runs here: queued jobs stay on
their lists, where the tests look at them (tests/test_server_process.py runs one)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dlq.store import DeadLetterStore
from ops.embedded import free_port
from ops.server import create_app
from ops.server.auth import SESSION_COOKIE, Tokens, parse_tokens
from ops.server.jobs import MAX_BATCH, SUPPORTS_TENANT
from producers import default_producer
from sluice.errors import ConfigError
from sluice.message import H_TENANT
from sluice.records import DeadLetterRecord
from sluice.settings import get_settings
from tests.conftest import Env, reset_all
from tests.test_dlq_store import rec

OPERATOR = "op-" + "o" * 29
SUBMIT = "sub-" + "s" * 28
ACME = "acme-" + "a" * 27
TOKENS = {OPERATOR: {"role": "operator", "name": "alice"}, SUBMIT: {"role": "submit"},
          ACME: {"role": "submit", "tenant": "acme"}}
EMAIL = {"to": "a@b.io", "subject": "hi"}
MAX_BODY = 65536


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def server_env(monkeypatch: pytest.MonkeyPatch, **settings: str) -> None:
    """The tokens (and `settings`) in the environment, then every cache forgotten."""
    monkeypatch.setenv("SLUICE_API_TOKENS", json.dumps(TOKENS))
    monkeypatch.setenv("SLUICE_SERVER_MAX_BODY", str(MAX_BODY))
    for key, value in settings.items():
        monkeypatch.setenv(f"SLUICE_{key.upper()}", value)
    reset_all()


@pytest.fixture
def api(sluice_env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    server_env(monkeypatch)
    with TestClient(create_app()) as client:
        yield client


@pytest.fixture
def store_api(store_env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The API over SQLite and over PostgreSQL."""
    server_env(monkeypatch)
    with TestClient(create_app()) as client:
        yield client


def pressure_at(env: Env, depth: int) -> None:
    """Put `depth` placeholders on the low queue and let the gate see them now."""
    env.client.lpush("low", *[b"x"] * depth)
    default_producer().monitor.tick()


def submit(client: TestClient, task: str, payload: Any, token: str = SUBMIT,
           **kwargs: Any) -> Any:
    return client.post(f"/v1/jobs/{task}", json=payload, headers=bearer(token)
                       | kwargs.pop("headers", {}), **kwargs)


# -- submissions -------------------------------------------------------------------------------

def test_submit_answers_202_with_the_receipt_and_queues_the_job(api: TestClient,
                                                               sluice_env: Env) -> None:
    r = submit(api, "email.send", EMAIL)
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["task"], body["queue"], body["priority"], body["level"]) == \
        ("email.send", "high", "HIGH", "NORMAL")
    assert not body["duplicate"] and not body["outboxed"]
    [message] = sluice_env.client.lrange("high", 0, -1)
    assert json.loads(message)["headers"]["id"] == body["task_id"]
    low = submit(api, "email.send", EMAIL, params={"priority": "low"})
    assert low.json()["queue"] == "low"


def test_an_idempotency_key_enqueues_once(api: TestClient, sluice_env: Env) -> None:
    first = submit(api, "email.send", EMAIL, headers={"Idempotency-Key": "signup-42"})
    again = submit(api, "email.send", EMAIL, headers={"Idempotency-Key": "signup-42"})
    assert first.status_code == again.status_code == 202
    assert again.json()["duplicate"] and again.json()["task_id"] == first.json()["task_id"]
    assert sluice_env.client.llen("high") == 1


@pytest.mark.parametrize("task, body, params, status, needles", [
    ("email.send", b"{not json", {}, 400, ["not valid JSON"]),
    ("email.send", b"", {}, 400, ["not valid JSON"]),
    ("email.send", b'{"to": NaN}', {}, 400, ["not valid JSON"]),
    ("emial.send", EMAIL, {}, 404, ["emial.send", "email.send"]),
    ("email.send", {"to": "not-an-address", "smtp_password": "hunter2-secret"}, {}, 422,
     ['"to"', '"subject"']),
    ("email.send", EMAIL, {"priority": "urgent"}, 422, ['"priority"']),
    ("email.send", EMAIL, {"deadline": "-5"}, 422, ['"deadline"']),
    ("email.send", EMAIL, {"countdown": "1e12"}, 422, ["SLUICE_VISIBILITY_TIMEOUT"]),
    ("email.send", {"to": "a@b.io", "subject": "x", "body": "y" * MAX_BODY}, {}, 413,
     ["SLUICE_SERVER_MAX_BODY"]),
])
def test_each_bad_request_gets_its_status_and_never_an_echo(
        api: TestClient, sluice_env: Env, task: str, body: Any, params: dict[str, str],
        status: int, needles: list[str]) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = api.post(f"/v1/jobs/{task}", content=content, params=params,
                 headers=bearer(SUBMIT) | {"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    for needle in needles:
        assert needle in r.text
    for secret in ("not-an-address", "hunter2-secret", "urgent", "-5", "yyyy"):
        assert secret not in r.text
    assert sluice_env.client.llen("high") == 0


def test_a_streamed_body_over_the_limit_is_refused_too(api: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"to": "a@b.io", "subject": "x", "body": "'
        for _ in range(MAX_BODY // 1000 + 1):
            yield b"y" * 1000
        yield b'"}'

    r = api.post("/v1/jobs/email.send", content=chunks(), headers=bearer(SUBMIT))
    assert r.status_code == 413


def test_shed_answers_429_with_retry_after_and_the_reason(api: TestClient,
                                                         sluice_env: Env) -> None:
    pressure_at(sluice_env, 600)  # WARNING: LOW is shed, CRITICAL accepted
    r = submit(api, "analytics.track", {"event": "e"})
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "2"
    body = r.json()
    assert (body["reason"], body["level"], body["priority"]) == \
        ("QUEUE_PRESSURE", "WARNING", "LOW")
    critical = submit(api, "audit.record", {"actor": "a", "action": "login"})
    assert critical.status_code == 202 and critical.json()["level"] == "WARNING"


def test_a_kill_switch_set_over_http_sheds_with_its_reason(api: TestClient) -> None:
    on = api.put("/v1/killswitches/task:email.send", json={"reason": "incident 7"},
                 headers=bearer(OPERATOR))
    assert on.status_code == 200 and on.json()["target"] == "task:email.send"
    assert api.get("/v1/killswitches", headers=bearer(OPERATOR)).json() == \
        [{"target": "task:email.send", "reason": "incident 7"}]
    default_producer().monitor.tick()
    r = submit(api, "email.send", EMAIL)
    assert r.status_code == 429 and r.json()["reason"] == "KILL_SWITCH"
    assert int(r.headers["Retry-After"]) > 0
    off = api.delete("/v1/killswitches/task:email.send", headers=bearer(OPERATOR))
    assert off.json()["was_on"] is True
    assert api.put("/v1/killswitches/priority:URGENT", headers=bearer(OPERATOR)).status_code \
        == 422
    default_producer().monitor.tick()
    assert submit(api, "email.send", EMAIL).status_code == 202


def test_a_shed_response_makes_no_round_trip_to_redis(sluice_env: Env,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The 429 is decided in memory: with the sampler idle (a long interval), 50 shed
    submissions leave Redis' command counter where it was."""
    server_env(monkeypatch, pressure_interval="60")
    sluice_env.client.lpush("low", *[b"x"] * 600)
    with TestClient(create_app()) as client:
        watcher = sluice_env.client  # one connection, opened before counting

        def commands() -> dict[str, int]:  # calls per command, but the test's own INFO
            stats = watcher.info("commandstats")
            return {k: v["calls"] for k, v in stats.items() if k != "cmdstat_info"}

        before = commands()
        for _ in range(50):
            assert submit(client, "analytics.track", {"event": "e"}).status_code == 429
        assert commands() == before


def test_broker_down_503_for_high_and_202_outboxed_for_critical(
        sluice_env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    server_env(monkeypatch, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app()) as client:
        r = submit(client, "email.send", EMAIL)
        assert r.status_code == 503 and r.headers["Retry-After"] == "5"
        assert r.json()["reason"] == "BROKER_UNAVAILABLE"
        critical = submit(client, "audit.record", {"actor": "a", "action": "login"})
        assert critical.status_code == 202 and critical.json()["outboxed"] is True
        assert client.get("/health").json() == {"status": "ok", "level": "UNKNOWN"}


def test_a_batch_answers_per_item(api: TestClient, sluice_env: Env) -> None:
    url = "/v1/jobs/analytics.track/batch"
    r = api.post(url, json=[{"event": "a"}, {"event": "b"}], headers=bearer(SUBMIT))
    assert r.status_code == 200 and r.json()["accepted"] == 2
    assert [i["status"] for i in r.json()["items"]] == [202, 202]
    assert sluice_env.client.llen("low") == 2
    bad = api.post(url, json=[{"event": "a"}, {"event": ""}], headers=bearer(SUBMIT))
    assert bad.status_code == 422 and "[1].event" in bad.text
    assert api.post(url, json={"event": "a"}, headers=bearer(SUBMIT)).status_code == 422
    many = api.post(url, json=[{}] * (MAX_BATCH + 1), headers=bearer(SUBMIT))
    assert many.status_code == 413
    pressure_at(sluice_env, 600)
    shed = api.post(url, json=[{"event": "c"}], headers=bearer(SUBMIT)).json()
    assert shed["rejected"] == 1 and shed["items"][0]["status"] == 429
    assert shed["items"][0]["reason"] == "QUEUE_PRESSURE"


def test_tokens_roles_and_tenants(api: TestClient, sluice_env: Env) -> None:
    assert api.get("/health").status_code == 200
    r = api.post("/v1/jobs/email.send", json=EMAIL)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert submit(api, "email.send", EMAIL, token="x" * 32).status_code == 401
    assert api.get("/v1/dead-letters", headers=bearer(SUBMIT)).status_code == 403
    assert api.get("/v1/pressure", headers=bearer(SUBMIT)).status_code == 200
    assert submit(api, "email.send", EMAIL, token=OPERATOR).status_code == 202
    other = submit(api, "email.send", EMAIL, token=ACME, params={"tenant": "other"})
    assert other.status_code == 403
    own = submit(api, "email.send", EMAIL, token=ACME)
    assert own.status_code == 202
    if SUPPORTS_TENANT:
        assert own.json()["tenant"] == "acme"
        message = json.loads(sluice_env.client.lindex("high", 0))
        assert message["headers"][H_TENANT] == "acme"


def test_tokens_are_read_from_a_file_and_bad_ones_are_named_without_the_token(
        tmp_path: Path, sluice_env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({OPERATOR: {"role": "operator"}}))
    monkeypatch.setenv("SLUICE_API_TOKENS_FILE", str(path))
    reset_all()
    tokens = Tokens.from_settings(get_settings())
    assert len(tokens) == 1 and tokens.bearer(f"Bearer {OPERATOR}") is not None
    for text, needle in [("{nope", "not valid JSON"), ("[]", "JSON object"),
                         ('{"short": {"role": "operator"}}', "shorter than"),
                         (json.dumps({OPERATOR: {"role": "root"}}), "entry 1: role")]:
        with pytest.raises(ConfigError) as info:
            parse_tokens(text, "SLUICE_API_TOKENS")
        assert needle in str(info.value) and OPERATOR not in str(info.value)
        assert "short" not in str(info.value).replace("shorter", "")


def test_pressure_tasks_and_the_openapi_document(api: TestClient, sluice_env: Env) -> None:
    pressure_at(sluice_env, 600)
    view = api.get("/v1/pressure", headers=bearer(SUBMIT)).json()
    assert view["level"] == "WARNING" and view["depths"]["low"] == 600
    assert set(view["predicted_wait_s"]) == {"CRITICAL", "HIGH", "NORMAL", "LOW"}
    tasks = {t["name"]: t for t in api.get("/v1/tasks", headers=bearer(SUBMIT)).json()}
    assert tasks["email.send"]["priority"] == "HIGH"
    assert "subject" in tasks["email.send"]["schema"]["properties"]
    doc = api.get("/openapi.json").json()
    body = doc["paths"]["/v1/jobs/email.send"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"] == \
        "#/components/schemas/email.send"
    assert {"to", "subject"} <= set(doc["components"]["schemas"]["email.send"]["properties"])
    assert "429" in doc["paths"]["/v1/jobs/email.send"]["post"]["responses"]
    assert api.get("/docs").status_code == 200


# -- dead letters ------------------------------------------------------------------------------

#: dead letters record their tenant since tenants exist
TENANTS = "tenant" in DeadLetterRecord.__dataclass_fields__


def seed(store: DeadLetterStore) -> dict[str, int]:
    tenant = {"tenant": "acme"} if TENANTS else {}
    store.record_many([
        rec("e1", payload={"to": "alice@x.io", "subject": "s"}),
        rec("e2", payload={"to": "bob@x.io", "subject": "s"}, message="relay <down>"),
        rec("a1", task="analytics.track", priority="LOW", payload={"event": "signup"},
            **tenant),
        rec("s1", payload={"to": "c@x.io", "subject": "s", "smtp_password": "***"},
            sealed="gAAAA-sealed-copy"),
    ])
    return {r.task_id: r.id for r in store.list(limit=10)}


def test_dead_letter_endpoints_filter_show_replay_and_discard(store_api: TestClient,
                                                              store_env: Env) -> None:
    ids = seed(DeadLetterStore())
    op = bearer(OPERATOR)
    page = store_api.get("/v1/dead-letters", params={"task": "email.send"}, headers=op).json()
    assert page["total"] == 3 and {r["task_id"] for r in page["items"]} == {"e1", "e2", "s1"}
    found = store_api.get("/v1/dead-letters", params={"q": "BOB@"}, headers=op).json()
    assert [r["task_id"] for r in found["items"]] == ["e2"]
    assert store_api.get("/v1/dead-letters", params={"error": "KeyError"},
                         headers=op).json()["total"] == 0
    assert store_api.get("/v1/dead-letters", params={"status": "gone"},
                         headers=op).status_code == 422
    if TENANTS:
        acme = store_api.get("/v1/dead-letters", params={"tenant": "acme"}, headers=op).json()
        assert [r["task_id"] for r in acme["items"]] == ["a1"]
    groups = store_api.get("/v1/dead-letters/groups", headers=op).json()
    assert [(g["task_name"], g["count"]) for g in groups] == [("email.send", 3),
                                                              ("analytics.track", 1)]
    shown = store_api.get("/v1/dead-letters/s1", headers=op).json()
    assert shown["payload"]["smtp_password"] == "***" and shown["sealed"] is True
    assert "gAAAA" not in json.dumps(shown) and shown["traceback"]
    assert store_api.get("/v1/dead-letters/nope", headers=op).status_code == 404

    r = store_api.post(f"/v1/dead-letters/{ids['e1']}/replay", headers=op)
    assert r.status_code == 202 and r.json()["outcome"] == "replayed"
    assert store_env.client.llen("high") == 1
    assert store_api.post(f"/v1/dead-letters/{ids['e1']}/replay", headers=op).status_code \
        == 409
    pressure_at(store_env, 600)  # WARNING: the LOW row is shed, the HIGH one replayed
    bulk = store_api.post("/v1/dead-letters/replay", headers=op,
                          json={"filter": {"q": "@x.io"}}).json()
    assert bulk["requested"] == 2 and bulk["counts"]["replayed"] == 1, bulk
    low = store_api.post("/v1/dead-letters/replay", headers=op,
                         json={"filter": {"priority": "low"}}).json()
    assert low["counts"] == {"rejected": 1} and low["shed"] == {"QUEUE_PRESSURE": 1}
    gone = store_api.post("/v1/dead-letters/discard", headers=op,
                          json={"ids": [ids["a1"]]}).json()
    assert gone["counts"] == {"discarded": 1}
    assert store_api.post("/v1/dead-letters/discard", headers=op, json={}).status_code == 422
    log = store_api.get("/v1/audit", headers=op).json()
    assert [e["action"] for e in log] == ["discard", "replay", "replay", "replay"]
    assert {e["who"] for e in log} == {"alice"}
    assert log[1]["scope"] == {"filter": {"priority": "LOW"}}


# -- the console -------------------------------------------------------------------------------

def login(client: TestClient, token: str = OPERATOR) -> Any:
    return client.post("/console/login", data={"token": token}, follow_redirects=False)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert match, html[:2000]
    return match.group(1)


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, html[:2000]
    return match.group(1).replace("&#34;", '"').replace("&quot;", '"')


def test_console_login_sessions_and_every_page(api: TestClient) -> None:
    assert api.get("/console/", follow_redirects=False).headers["location"] == "/console/login"
    assert login(api, SUBMIT).status_code == 401  # a submit token does not open the console
    assert login(api, "y" * 32).status_code == 401
    r = login(api)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    assert OPERATOR not in cookie
    for path in ("/console/", "/console/dead-letters", "/console/dead-letters/groups",
                 "/console/killswitches", "/console/schedules", "/console/workers",
                 "/console/audit"):
        page = api.get(path)
        assert page.status_code == 200, path
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
        assert "alice" in page.text
    assert api.get("/v1/pressure").status_code == 200  # reads: the session works
    assert api.post("/v1/jobs/email.send", json=EMAIL).status_code == 401  # writes: bearer only
    session = api.cookies[SESSION_COOKIE]
    api.cookies.clear()
    api.cookies.set(SESSION_COOKIE, session[:-1] + ("1" if session[-1] == "0" else "0"))
    assert api.get("/console/", follow_redirects=False).status_code == 303  # forged
    api.cookies.clear()
    api.cookies.set(SESSION_COOKIE, session)
    page = api.get("/console/", follow_redirects=False)
    assert page.status_code == 200
    out = api.post("/console/logout", data={"csrf": csrf_of(page.text)},
                   follow_redirects=False)
    assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]


def test_console_forms_refuse_a_wrong_csrf_token(api: TestClient, sluice_env: Env) -> None:
    login(api)
    form = {"target": "priority:LOW", "on": "1", "reason": "r"}
    assert api.post("/console/killswitches", data=form).status_code == 403
    assert api.post("/console/killswitches", data=form | {"csrf": "0" * 40}).status_code == 403
    assert not sluice_env.client.hgetall("sluice:killswitch")
    token = csrf_of(api.get("/console/killswitches").text)
    r = api.post("/console/killswitches", data=form | {"csrf": token}, follow_redirects=False)
    assert r.status_code == 303
    assert "priority:LOW" in api.get("/console/killswitches").text
    api.post("/console/killswitches", data={"target": "priority:LOW", "csrf": token})
    assert not sluice_env.client.hgetall("sluice:killswitch")


def test_console_bulk_replay_goes_through_a_confirmation(store_api: TestClient,
                                                         store_env: Env) -> None:
    ids = seed(DeadLetterStore())
    login(store_api)
    listing = store_api.get("/console/dead-letters", params={"task": "email.send"})
    assert "3 matching" in listing.text and "alice@x.io" in listing.text
    assert "gAAAA" not in listing.text
    assert "relay &lt;down&gt;" in listing.text and "relay <down>" not in listing.text
    token = csrf_of(listing.text)
    confirm = store_api.post("/console/dead-letters/confirm", data={
        "csrf": token, "action": "replay", "scope": "filter", "task": "email.send"})
    assert confirm.status_code == 200
    assert "Replay 3 dead letters?" in confirm.text and "through the gate" in confirm.text
    assert "<td>HIGH</td><td>3</td><td>accepted</td>" in confirm.text
    assert store_env.client.llen("high") == 0  # nothing happens before the confirmation
    done = store_api.post("/console/dead-letters/bulk", data={
        "csrf": token, "action": "replay", "ids": hidden(confirm.text, "ids"),
        "scope": hidden(confirm.text, "scope")})
    assert done.status_code == 200 and "replayed" in done.text
    # the row whose secret is masked and whose sealed copy cannot be opened is refused
    assert "refused" in done.text and "Not replayed" in done.text
    assert store_env.client.llen("high") == 2
    assert {r.task_id: r.status for r in DeadLetterStore().list(limit=10)
            if r.task_name == "email.send"} == {"e1": "replayed", "e2": "replayed",
                                                "s1": "pending"}
    audit_page = store_api.get("/console/audit").text
    assert "alice" in audit_page and "email.send" in audit_page
    detail = store_api.get(f"/console/dead-letters/{ids['s1']}")
    assert "***" in detail.text and "gAAAA" not in detail.text
    assert "Traceback" in detail.text
    groups = store_api.get("/console/dead-letters/groups")
    assert "analytics.track" in groups.text and "RuntimeError" in groups.text
