"""auth.event (CRITICAL): record a login / logout / failed-login event."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr

from sluice.priorities import Priority
from workers import effects
from workers.base import sluice_task


class AuthEvent(BaseModel):
    user_id: str = Field(min_length=1)
    kind: Literal["login", "logout", "login_failed", "password_reset"]
    ip: str = ""
    session_token: SecretStr | None = None  # sealed in transit; the effect keeps a fingerprint


@sluice_task("auth.event", Priority.CRITICAL, AuthEvent)
def event(payload: AuthEvent) -> None:
    effects.append("auth", payload.model_dump(exclude={"session_token"})
                   | {"session": effects.fingerprint(payload.session_token)})
