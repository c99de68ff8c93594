"""Sealed payloads: the original payload of a job with secret fields, encrypted, so that a
dead letter can be replayed with its real secrets while its row shows only `***`.

The cipher is Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`), keyed by
`SLUICE_SECRET_KEY`. Without a key nothing is sealed: rows keep the masked payload only,
and a replay of a masked payload is refused rather than sent with `***` in it.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from sluice.errors import ConfigError
from sluice.settings import get_settings

__all__ = ["seal", "unseal", "can_seal"]


def _fernet() -> Fernet | None:
    key = get_settings().secret_key
    if key is None:
        return None
    try:
        return Fernet(key.get_secret_value().encode())
    except (ValueError, TypeError):
        raise ConfigError("SLUICE_SECRET_KEY is not a Fernet key (32 url-safe base64-encoded "
                          "bytes; make one with `sluice secret-key`)") from None


def can_seal() -> bool:
    """Whether a key is configured."""
    return _fernet() is not None


def seal(payload: Any) -> str | None:
    """The payload as an encrypted token (None when no key is configured)."""
    fernet = _fernet()
    if fernet is None:
        return None
    return fernet.encrypt(json.dumps(payload, default=str).encode()).decode()


def unseal(token: str) -> Any:
    """The payload a token was made from; ConfigError when the key cannot open it."""
    fernet = _fernet()
    if fernet is None:
        raise ConfigError("this payload is sealed: set SLUICE_SECRET_KEY to the key it was "
                          "sealed with")
    try:
        return json.loads(fernet.decrypt(token.encode()))
    except InvalidToken:
        raise ConfigError("SLUICE_SECRET_KEY cannot open this sealed payload (the key changed?)"
                          ) from None
