"""Who is calling: bearer tokens for the API, signed session cookies and CSRF tokens for the
console.

Tokens come from `SLUICE_API_TOKENS` (a JSON object) and/or the file named by
`SLUICE_API_TOKENS_FILE`. They are secrets: only their SHA-256 digests are kept, so a lookup
costs one hash and a dict access (no I/O, no timing leak on a prefix), and nothing here ever
formats a token into a message or a log line. A console session names the token's digest,
an expiry and an HMAC whose key is derived from every token, so removing a token (or adding
one) and restarting ends every session.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ops.server.errors import CsrfRefused, Forbidden, Unauthorized
from sluice.errors import ConfigError
from sluice.settings import Settings

__all__ = ["Role", "Caller", "Tokens", "LoginRequired", "api_caller", "require", "submitter",
           "operator", "console_operator", "check_csrf", "local_tokens", "SESSION_COOKIE",
           "SESSION_S", "MIN_TOKEN_LENGTH"]

SESSION_COOKIE = "sluice_session"
SESSION_S = 12 * 3600
#: shorter tokens are refused at start-up: a guessable token is no access control
MIN_TOKEN_LENGTH = 16
SAFE_METHODS = frozenset({"GET", "HEAD"})


class Role(enum.StrEnum):
    """What a token may do."""

    SUBMIT = "submit"  #: submit jobs; read the pressure and the task list
    OPERATOR = "operator"  #: everything, the console included


@dataclass(frozen=True, slots=True, kw_only=True)
class Caller:
    """An authenticated caller: never the token itself, only its digest."""

    name: str
    role: Role
    digest: str
    tenant: str | None = None

    def allows(self, role: Role) -> bool:
        """Operators may do everything a submit token may."""
        return self.role is Role.OPERATOR or role is self.role


class TokenEntry(BaseModel):
    """The value of one token in SLUICE_API_TOKENS."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    tenant: str | None = Field(None, min_length=1, max_length=200)
    name: str | None = Field(None, min_length=1, max_length=100)


def digest(token: str) -> str:
    """The SHA-256 of a token, hex: what is kept and compared instead of the token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Tokens:
    """The token table, with the session and CSRF signatures derived from it."""

    def __init__(self, table: dict[str, TokenEntry]) -> None:
        self._callers = {digest(token): _caller(token, entry) for token, entry in table.items()}
        material = b"\0".join(sorted(t.encode("utf-8", "surrogatepass") for t in table))
        self._key = hashlib.sha256(b"sluice-console\0" + material).digest()

    @classmethod
    def from_settings(cls, settings: Settings) -> Tokens:
        """Read SLUICE_API_TOKENS and SLUICE_API_TOKENS_FILE (both may be set: their union).
        ConfigError names the variable and the entry, never a token."""
        table: dict[str, TokenEntry] = {}
        if settings.api_tokens is not None:
            table |= parse_tokens(settings.api_tokens.get_secret_value(), "SLUICE_API_TOKENS")
        if settings.api_tokens_file is not None:
            table |= parse_tokens(_read(settings.api_tokens_file), "SLUICE_API_TOKENS_FILE")
        return cls(table)

    def __len__(self) -> int:
        return len(self._callers)

    def bearer(self, header: str | None) -> Caller | None:
        """The caller of an `Authorization: Bearer <token>` header, if the token is known."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.caller(token.strip())

    def caller(self, token: str) -> Caller | None:
        """The caller holding `token`, if it is known."""
        return self._callers.get(digest(token))

    def session_for(self, caller: Caller, now: float) -> str:
        """A cookie value that stands for `caller` until `now + SESSION_S`."""
        body = f"{caller.digest}.{int(now + SESSION_S)}"
        return f"{body}.{self._sign('session:' + body)}"

    def from_session(self, value: str | None, now: float) -> Caller | None:
        """The caller of a session cookie: None when forged, expired or its token is gone."""
        parts = (value or "").split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        body = f"{parts[0]}.{parts[1]}"
        if not hmac.compare_digest(self._sign("session:" + body), parts[2]):
            return None
        if int(parts[1]) < now:
            return None
        return self._callers.get(parts[0])

    def csrf_for(self, session: str) -> str:
        """The CSRF token that forms of this session must carry back."""
        return self._sign("csrf:" + session)[:40]

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()


def _caller(token: str, entry: TokenEntry) -> Caller:
    d = digest(token)
    return Caller(name=entry.name or f"token-{d[:8]}", role=entry.role, digest=d,
                  tenant=entry.tenant)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"SLUICE_API_TOKENS_FILE: cannot read {path} "
                          f"({type(exc).__name__})") from None


def local_tokens(path: Path) -> bool:
    """For a server on this machine only (`make up`) with no token configured: make sure
    `path` holds an operator token, created with mode 0600 when missing (the token is
    written there, never printed). Returns whether it was created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({secrets.token_urlsafe(32): {"role": "operator", "name": "local"}}, fh)
    return True


def parse_tokens(text: str, variable: str) -> dict[str, TokenEntry]:
    """A JSON object token -> entry; ConfigError naming `variable` and the entry's position
    (never its token, nor a value: the whole text is a secret)."""
    try:
        raw = json.loads(text)
    except ValueError:
        raise ConfigError(f"{variable} is not valid JSON: expected an object "
                          '{"<token>": {"role": "submit" | "operator", "tenant": "..."}}') \
            from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{variable} must be a JSON object of token -> entry")
    return {token: _entry(token, value, f"{variable}, entry {n}")
            for n, (token, value) in enumerate(raw.items(), start=1)}


def _entry(token: str, value: Any, where: str) -> TokenEntry:
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"{where}: the token is shorter than {MIN_TOKEN_LENGTH} characters")
    try:
        return TokenEntry.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}"
                             for e in exc.errors(include_input=False, include_url=False))
        raise ConfigError(f"{where}: {problems}") from None


# -- FastAPI dependencies ------------------------------------------------------------------

def tokens_of(request: Request) -> Tokens:
    tokens: Tokens = request.app.state.tokens
    return tokens


def api_caller(request: Request) -> Caller:
    """The bearer token's caller; for reads, a console session works too (the console's
    live pages poll the API). Unauthorized otherwise: no token, no access."""
    tokens = tokens_of(request)
    caller = tokens.bearer(request.headers.get("authorization"))
    if caller is None and request.method in SAFE_METHODS:
        caller = tokens.from_session(request.cookies.get(SESSION_COOKIE), time.time())
    if caller is None:
        raise Unauthorized()
    return caller


def require(role: Role) -> Callable[[Caller], Caller]:
    """A dependency: the caller, if its role allows `role`; Forbidden otherwise."""
    def dependency(caller: Caller = Depends(api_caller)) -> Caller:
        if not caller.allows(role):
            raise Forbidden(f"this token's role is {caller.role}; this needs {role}")
        return caller
    return dependency


submitter = require(Role.SUBMIT)
operator = require(Role.OPERATOR)


class LoginRequired(Unauthorized):
    """Log in to the console with an operator token."""


def console_operator(request: Request) -> Caller:
    """The console session's caller (an operator); LoginRequired sends the browser to the
    login form."""
    caller = tokens_of(request).from_session(request.cookies.get(SESSION_COOKIE), time.time())
    if caller is None or not caller.allows(Role.OPERATOR):
        raise LoginRequired()
    return caller


def check_csrf(request: Request, token: str | None) -> None:
    """Refuse a console form whose CSRF token does not match the session's (CsrfRefused)."""
    session = request.cookies.get(SESSION_COOKIE) or ""
    expected = tokens_of(request).csrf_for(session)
    if not session or not token or not hmac.compare_digest(expected, token):
        raise CsrfRefused()
