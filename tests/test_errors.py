"""Errors: one base class, useful default messages, and picklable (Celery moves exceptions
between pool processes; an unpicklable one arrives as a wrapper and loses its type)."""

from __future__ import annotations

import pickle

import pytest

from sluice import errors
from sluice.priorities import PressureLevel, Priority


@pytest.mark.parametrize("exc", [
    errors.InvalidPayload("email.send", [{"field": "to", "message": "bad", "type": "x"}]),
    errors.UnknownTask("emial.send", ["email.send"]),
    errors.Rejected("QUEUE_PRESSURE", PressureLevel.SHED, Priority.LOW, 10.0, "t"),
    errors.PermanentError(), errors.PendingMigrations(), errors.UnknownPriority("p"),
])
def test_every_error_is_a_sluice_error_and_survives_pickling(exc: errors.SluiceError) -> None:
    assert isinstance(exc, errors.SluiceError) and str(exc)
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is type(exc) and str(copy) == str(exc)


def test_the_docstring_is_the_default_message() -> None:
    assert "sluice db upgrade" in str(errors.PendingMigrations())
