"""email.send (HIGH): hand an email to the outbound relay (here: the spool file)."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr

from sluice.priorities import Priority
from workers import effects
from workers.base import sluice_task


class Email(BaseModel):
    to: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    subject: str = Field(max_length=200)
    body: str = ""
    smtp_password: SecretStr | None = None  # masked in dead letters


@sluice_task("email.send", Priority.HIGH, Email)
def send(payload: Email) -> None:
    effects.append("email", {"to": payload.to, "subject": payload.subject})
