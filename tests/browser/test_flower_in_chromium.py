"""Flower as a user sees it, in a real headless Chromium: the Broker page lists the four
queues with their depths, the task list and a task page show each job's queue, a secret
field shows as `***`, and a dead-lettered job's page says how to replay it.

Set SCREENSHOTS_DIR=docs/img to refresh the screenshots docs/operations.md shows."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By

from producers import submit
from tests import services
from tests.conftest import Env, Processes
from tests.services import wait_for
from tests.test_flower import (
    AUTH,
    CANARY,
    api,
    busy_worker_with_a_backlog,
    listening,
    running_flower,
)


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """Debian's Chromium, headless, sending Flower's credentials with every request."""
    chrome = services.chromium(tmp_path, height=900)
    try:
        chrome.execute_cdp_cmd("Network.enable", {})
        chrome.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {
            "Authorization": "Basic " + base64.b64encode(AUTH.encode()).decode()}})
        yield chrome
    finally:
        chrome.quit()


def _shot(chrome: webdriver.Chrome, tmp: Path, name: str) -> None:
    chrome.save_screenshot(str(tmp / f"{name}.png"))
    folder = os.environ.get("SCREENSHOTS_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        chrome.save_screenshot(str(Path(folder) / f"{name}.png"))


def _broker_depths(chrome: webdriver.Chrome, url: str) -> dict[str, int]:
    chrome.get(url)
    rows = chrome.find_elements(By.CSS_SELECTOR, "#queue-table tbody tr")
    cells = [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]
    return {c[0]: int(c[1]) for c in cells if len(c) > 1 and c[1].isdigit()}


def _cell(chrome: webdriver.Chrome, task_id: str, column: str) -> str:
    """The text of `column` in the task list's row for `task_id` ('' until it is shown)."""
    headers = [th.get_attribute("data-column")
               for th in chrome.find_elements(By.CSS_SELECTOR, "#tasks-table thead th")]
    try:
        row = chrome.find_element(By.ID, task_id)
        return str(row.find_elements(By.TAG_NAME, "td")[headers.index(column)].text)
    except (WebDriverException, ValueError, IndexError):
        return ""


def test_flower_in_chromium(sluice_env: Env, processes: Processes, tmp_path: Path,
                            chromium: webdriver.Chrome) -> None:
    with running_flower(sluice_env) as port:
        base = f"http://127.0.0.1:{port}"
        processes.worker(concurrency=1, drain_seconds="1")
        listening(port)
        mail = submit("email.send", {"to": "a@b.io", "subject": "hi", "smtp_password": CANARY})
        dead = submit("demo.flaky", {"permanent": True})
        wait_for(lambda: api(port, f"/api/task/info/{dead.task_id}")["state"] == "FAILURE",
                 what="the dead letter")
        expected = busy_worker_with_a_backlog(sluice_env)
        wait_for(lambda: _broker_depths(chromium, f"{base}/broker") == expected,
                 timeout=15, interval=0.5, what="the Broker page listing the four depths")
        _shot(chromium, tmp_path, "flower-broker")

        chromium.get(f"{base}/tasks")
        wait_for(lambda: _cell(chromium, mail.task_id, "routing_key") == "high",
                 timeout=15, interval=0.3, what="the task list showing the job's queue")
        assert "'smtp_password': '***'" in _cell(chromium, mail.task_id, "args")
        assert _cell(chromium, dead.task_id, "routing_key") == "normal"
        _shot(chromium, tmp_path, "flower-tasks")

        chromium.set_window_size(1400, 1600)  # a task page is long: its queue is far down
        chromium.get(f"{base}/task/{mail.task_id}")
        page = chromium.find_element(By.ID, "task-page").text
        assert "Routing key\nhigh" in page and "Exchange\nsluice" in page
        assert "'smtp_password': '***'" in page
        assert CANARY not in chromium.page_source
        _shot(chromium, tmp_path, "flower-task")

        chromium.get(f"{base}/task/{dead.task_id}")
        page = chromium.find_element(By.ID, "task-page").text
        assert "FAILURE" in page and f"sluice dlq show {dead.task_id}" in page
        _shot(chromium, tmp_path, "flower-dead-letter")
