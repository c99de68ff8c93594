"""email.send (HIGH): hand an email to the outbound relay (here: the spool file).

The relay refuses addresses under the reserved `.invalid` top-level domain (RFC 2606): a
permanent failure, for trying dead letters by hand. Each attempt is recorded with the SMTP
password's fingerprint, never the password, so one can see which one the task received.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr

from sluice.errors import PermanentError
from sluice.priorities import Priority
from workers import effects
from workers.base import sluice_task


class Email(BaseModel):
    to: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    subject: str = Field(max_length=200)
    body: str = ""
    smtp_password: SecretStr | None = None  # sealed in transit, masked in dead letters


@sluice_task("email.send", Priority.HIGH, Email)
def send(payload: Email) -> None:
    refused = payload.to.lower().endswith(".invalid")
    effects.append("email", {"to": payload.to, "subject": payload.subject,
                             "smtp_auth": effects.fingerprint(payload.smtp_password),
                             "delivered": not refused})
    if refused:
        raise PermanentError(f"the relay refuses {payload.to.split('@')[-1]!r} (.invalid)")
