"""The idempotent effect sink the example tasks use: one record per key, atomically."""

from __future__ import annotations

import threading

from tests.conftest import Env
from workers import effects


def test_put_applies_an_effect_once_per_key_even_from_racing_threads(sluice_env: Env) -> None:
    results: list[bool] = []
    barrier = threading.Barrier(20)

    def go() -> None:
        barrier.wait()
        results.append(effects.put("audit", "key-1", {"n": 1}))

    threads = [threading.Thread(target=go) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert [r["key"] for r in effects.read("audit")] == ["key-1"]
    assert effects.put("audit", "key-2", {"n": 2}) is True
    assert [r["n"] for r in effects.read("audit")] == [1, 2]
