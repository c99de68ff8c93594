"""The errors only the HTTP face raises, under `SluiceError` like every other, so one
exception handler turns any of them into a status code (`ops.server.problems`)."""

from __future__ import annotations

from sluice.errors import SluiceError, UsageError

__all__ = ["Unauthorized", "Forbidden", "CsrfRefused", "BodyTooLarge", "MalformedJson"]


class Unauthorized(SluiceError):
    """No valid token: send `Authorization: Bearer <token>` (or log in to the console)."""


class Forbidden(SluiceError):
    """This token's role does not allow that."""


class CsrfRefused(Forbidden):
    """The form's CSRF token is missing or wrong: reload the page and try again."""


class BodyTooLarge(UsageError):
    """The request body is larger than SLUICE_SERVER_MAX_BODY."""


class MalformedJson(UsageError):
    """The request body is not valid JSON."""
