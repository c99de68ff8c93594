"""`sluice server` as a process: an operator in a real Chromium and a client over real HTTP
(a keep-alive client), a real worker behind them; the refusal to start without a token."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from dlq.store import DeadLetterStore
from ops import processes as procs
from ops.embedded import free_port
from ops.server.auth import local_tokens, parse_tokens
from producers import submit_many
from tests import services
from tests.conftest import Env, Processes
from tests.services import wait_for
from tests.test_dlq_store import rec
from tests.test_server import EMAIL, OPERATOR, SUBMIT, TOKENS, bearer

SLUICE = [sys.executable, "-c", "from ops.cli import main; main()"]


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """Debian's Chromium, headless."""
    chrome = services.chromium(tmp_path)
    try:
        yield chrome
    finally:
        chrome.quit()


@contextlib.contextmanager
def running_server(env: Env) -> Iterator[str]:
    """`sluice server` as an operator runs it, on a free port; yields its base URL."""
    port = free_port()
    log = env.tmp / "logs" / "server.log"
    server = procs.spawn([*SLUICE, "server", "--no-access-log"],
                         env.process_env(SLUICE_API_TOKENS=json.dumps(TOKENS),
                                         SLUICE_SERVER_PORT=str(port)), log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, timeout=30,
                 what="sluice server answers /health")
        yield base
    finally:
        procs.stop(server, timeout=10)
    # uvicorn shuts down cleanly on SIGTERM, then exits by that signal as a process should
    assert "Application shutdown complete" in log.read_text(), log.read_text()


def shot(chrome: webdriver.Chrome, name: str) -> None:
    """SCREENSHOTS_DIR=docs/img refreshes the screenshots docs/server.md shows."""
    folder = os.environ.get("SCREENSHOTS_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        chrome.save_screenshot(str(Path(folder) / f"{name}.png"))


def text_of(chrome: webdriver.Chrome, element_id: str) -> str:
    return str(chrome.find_element(By.ID, element_id).text)


def shown(chrome: webdriver.Chrome, element_id: str) -> str:
    """The text of `element_id` once the page that has it is there: a click on a form's
    button returns before the browser has loaded the page the form posts to (a fresh-clone
    run found no #gate-note right after the click)."""
    return str(wait_for(lambda: text_of(chrome, element_id), timeout=10,
                        what=f"the page showing #{element_id}"))


def test_an_operator_in_chromium_and_a_client_over_http(
        sluice_env: Env, processes: Processes, chromium: webdriver.Chrome) -> None:
    """Log in; the pressure page moves while a burst queues; filter the dead letters,
    bulk-replay them through the confirmation; the rows turn `replayed` and a real worker
    runs the jobs, with one submitted over HTTP (a keep-alive client) beside them."""
    from workers import effects

    DeadLetterStore().record_many(
        [rec(f"dead-{i}", payload={"to": f"u{i}@x.io", "subject": f"replayed {i}"})
         for i in range(3)] + [rec("other", task="analytics.track", priority="LOW")])
    # no worker on `low`: the burst stays queued, the replayed HIGH jobs run
    worker = processes.worker(queues="critical,high,normal", wait=False, drain_seconds="1")
    with running_server(sluice_env) as base:
        chromium.get(f"{base}/console/")
        chromium.find_element(By.NAME, "token").send_keys(OPERATOR + Keys.ENTER)
        wait_for(lambda: text_of(chromium, "level") == "NORMAL", timeout=10,
                 what="the pressure page after logging in")
        submit_many("analytics.track", [{"event": "burst"}] * 600)
        wait_for(lambda: text_of(chromium, "level") == "WARNING"
                 and text_of(chromium, "depth-low") == "600", timeout=10, interval=0.2,
                 what="the pressure page showing the burst")
        shot(chromium, "console-pressure")

        chromium.get(f"{base}/console/dead-letters")
        Select(chromium.find_element(By.NAME, "task")).select_by_visible_text("email.send")
        chromium.find_element(By.CSS_SELECTOR, "form.filters button").click()
        wait_for(lambda: "3 matching" in chromium.find_element(By.TAG_NAME, "h1").text,
                 timeout=10, what="the filtered list")
        shot(chromium, "console-dead-letters")
        chromium.find_element(By.XPATH, "//button[starts-with(., 'Replay all 3')]").click()
        assert "through the gate" in shown(chromium, "gate-note")
        shot(chromium, "console-confirm")
        chromium.find_element(By.ID, "confirm").click()
        assert "replayed\n3" in shown(chromium, "outcome").replace(" ", "\n")

        with httpx.Client(base_url=base, timeout=10) as http:  # keep-alive
            r = http.post("/v1/jobs/email.send", json=EMAIL, headers=bearer(SUBMIT))
            assert r.status_code == 202, r.text
            assert http.get("/v1/dead-letters", headers=bearer(SUBMIT)).status_code == 403
        chromium.get(f"{base}/console/dead-letters?task=email.send")
        statuses = [td.text for td in chromium.find_elements(By.CSS_SELECTOR, "td.status")]
        assert statuses == ["replayed"] * 3
        wait_for(lambda: worker.alive() and len(effects.read("email")) == 4, timeout=40,
                 what="the replayed jobs and the submitted one ran")
    assert {e["subject"] for e in effects.read("email")} == \
        {"hi", "replayed 0", "replayed 1", "replayed 2"}


def test_without_a_token_the_server_refuses_a_public_binding(sluice_env: Env) -> None:
    from typer.testing import CliRunner

    from ops.cli import app

    out = CliRunner().invoke(app, ["server", "--host", "0.0.0.0", "--port", "1"])
    assert out.exit_code == 2 and "SLUICE_API_TOKENS" in out.output


def test_a_local_token_file_is_made_once_and_kept_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "api-tokens.json"
    assert local_tokens(path) is True
    assert path.stat().st_mode & 0o077 == 0
    first = path.read_text()
    assert local_tokens(path) is False and path.read_text() == first
    [(token, entry)] = parse_tokens(first, "SLUICE_API_TOKENS_FILE").items()
    assert entry.role == "operator" and len(token) >= 32
