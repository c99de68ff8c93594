"""Sealed secrets: the values of a payload's secret fields, encrypted by the producer and
opened only inside the task, so that Redis, the ledger, the outbox, the spool, dead-letter
rows, events and logs only ever hold ciphertext or `***`.

The cipher is Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`), keyed by
`SLUICE_SECRET_KEY`: one key, or several separated by commas for rotation (`MultiFernet`:
the first seals, every one opens). A sealed value is the string `sluice-sealed:<token>`
whose token holds the value's JSON. Without a key, a submission that carries a secret value
is refused (`SecretKeyMissing`, naming the setting), rather than sent in clear.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import BaseModel

from sluice.errors import ConfigError, SecretKeyMissing
from sluice.message import has_secrets, map_secrets
from sluice.settings import get_settings

__all__ = ["PREFIX", "seal", "unseal", "can_seal", "seal_secrets", "unseal_secrets",
           "is_sealed", "under_old_key", "stale_seal", "carries_secrets"]

PREFIX = "sluice-sealed:"
_cache: tuple[str, MultiFernet, Fernet] | None = None


def _ciphers() -> tuple[MultiFernet, Fernet] | None:
    """(every key, the first key), built once per key setting."""
    global _cache
    key = get_settings().secret_key
    if key is None:
        return None
    text = key.get_secret_value()
    if _cache is None or _cache[0] != text:
        try:
            keys = [Fernet(part.strip().encode()) for part in text.split(",") if part.strip()]
        except (ValueError, TypeError):
            raise ConfigError("SLUICE_SECRET_KEY is not a Fernet key, or a comma-separated list "
                              "of them (32 url-safe base64-encoded bytes each; make one with "
                              "`sluice secret-key`)") from None
        if not keys:
            return None
        _cache = (text, MultiFernet(keys), keys[0])
    return _cache[1], _cache[2]


def can_seal() -> bool:
    """Whether a key is configured."""
    return _ciphers() is not None


def _cipher(task_name: str = "") -> MultiFernet:
    ciphers = _ciphers()
    if ciphers is None:
        raise SecretKeyMissing(task_name)
    return ciphers[0]


def seal(payload: Any) -> str | None:
    """A whole payload as an encrypted token (None when no key is configured)."""
    if not can_seal():
        return None
    return _cipher().encrypt(json.dumps(payload, default=str).encode()).decode()


def unseal(token: str) -> Any:
    """What `seal` (or a sealed value's token) was made from; ConfigError when no key
    configured can open it."""
    try:
        return json.loads(_cipher().decrypt(token.encode()))
    except SecretKeyMissing:
        raise ConfigError("this payload is sealed: set SLUICE_SECRET_KEY to the key it was "
                          "sealed with") from None
    except InvalidToken:
        raise ConfigError("SLUICE_SECRET_KEY cannot open this sealed payload (the key changed? "
                          "keep the old key after the new one, comma-separated)") from None


def is_sealed(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def carries_secrets(model: type[BaseModel], payload: Any) -> bool:
    """Whether `payload` holds a value (not None) in any secret field of `model`."""
    found: list[Any] = []
    if has_secrets(model):
        map_secrets(model, payload, lambda v: found.append(v) if v is not None else None)
    return bool(found)


def seal_secrets(task_name: str, model: type[BaseModel], payload: Any) -> Any:
    """`payload` with the value of every secret field sealed (one walk; the payload itself
    when the model has none). SecretKeyMissing when it carries a secret value and no key is
    configured: a secret is never sent in clear."""
    if not has_secrets(model):
        return payload
    ciphers = _ciphers()

    def close(value: Any) -> Any:
        if value is None or is_sealed(value):
            return value
        if ciphers is None:
            raise SecretKeyMissing(task_name)
        return PREFIX + ciphers[0].encrypt(json.dumps(value, default=str).encode()).decode()

    return map_secrets(model, payload, close)


def unseal_secrets(model: type[BaseModel], payload: Any) -> Any:
    """`payload` with every sealed secret field opened (inside the task, for a replay)."""

    def open_(value: Any) -> Any:
        return unseal(value[len(PREFIX):]) if is_sealed(value) else value

    return map_secrets(model, payload, open_)


def stale_seal(stored: str) -> bool:
    """Whether a dead letter's sealed copy (the payload JSON with sealed values, or an older
    whole-payload token) holds anything only an old key opens."""
    if not stored.startswith(("{", "[")):
        return under_old_key(stored)
    found: list[str] = []
    _collect(json.loads(stored), found)
    return any(under_old_key(token) for token in found)


def _collect(value: Any, found: list[str]) -> None:
    if is_sealed(value):
        found.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            _collect(item, found)
    elif isinstance(value, list):
        for item in value:
            _collect(item, found)


def under_old_key(token: str) -> bool:
    """Whether `token` (or a sealed value) opens only with a key other than the first: a
    row to re-seal before that key is dropped."""
    ciphers = _ciphers()
    if ciphers is None:
        return False
    token = token[len(PREFIX):] if is_sealed(token) else token
    try:
        ciphers[1].decrypt(token.encode())
        return False
    except InvalidToken:
        return True
