"""Observable work for the example tasks: one JSON line per effect in `SLUICE_DATA_DIR`."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from sluice.settings import get_settings

__all__ = ["append", "read"]


def _path(domain: str) -> Path:
    return Path(get_settings().data_dir) / f"{domain}.jsonl"


def append(domain: str, record: dict[str, Any]) -> None:
    """Append one JSON line (with a timestamp and pid) to `<data_dir>/<domain>.jsonl`."""
    path = _path(domain)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"at": time.time(), "pid": os.getpid(), **record}, default=str)
    with open(path, "a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(line + "\n")
        fh.flush()


def read(domain: str) -> list[dict[str, Any]]:
    """Every record written for `domain` (tests and the demo read them back)."""
    path = _path(domain)
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
