"""Observable work for the example tasks, in `SLUICE_DATA_DIR`.

`append` adds a JSON line per effect. `put` is the idempotent kind: one file per key,
created atomically (write a temp file, then `os.link`, which fails if the key exists), so a
job redelivered after its worker died cannot apply the effect twice, and a worker killed
half-way cannot leave it claimed but unapplied. It is what a unique constraint is to a table.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from sluice.settings import get_settings

__all__ = ["append", "put", "read", "fingerprint"]


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


def put(domain: str, key: str, record: dict[str, Any]) -> bool:
    """Apply the effect for `key` once: returns False if it was already applied."""
    folder = Path(get_settings().data_dir) / domain
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / (hashlib.sha256(key.encode()).hexdigest() + ".json")
    if final.exists():
        return False
    fd, name = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")  # unique per writer
    tmp = Path(name)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"at": time.time(), "pid": os.getpid(), "key": key, **record}, fh,
                  default=str)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, final)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True


def read(domain: str) -> list[dict[str, Any]]:
    """Every record written for `domain`, oldest first (tests and the demo read them back)."""
    records = []
    path = _path(domain)
    if path.exists():
        with open(path, encoding="utf-8") as fh:
            records += [json.loads(line) for line in fh if line.strip()]
    folder = Path(get_settings().data_dir) / domain
    if folder.is_dir():
        records += [json.loads(f.read_text()) for f in folder.glob("*.json")]
    return sorted(records, key=lambda r: r["at"])


def fingerprint(secret: Any) -> str | None:
    """What an effect may record of a secret (a pydantic SecretStr / SecretBytes): a short
    hash that tells which one was used, never the value."""
    if secret is None:
        return None
    value = secret.get_secret_value()
    data = value if isinstance(value, bytes) else str(value).encode()
    return hashlib.sha256(data).hexdigest()[:16]
