"""cleanup.run (LOW): remove stale temporary data."""

from __future__ import annotations

from pydantic import BaseModel, Field

from sluice.priorities import Priority
from workers import effects
from workers.base import sluice_task


class Cleanup(BaseModel):
    target: str = Field(min_length=1)
    older_than_days: int = Field(7, ge=0)


@sluice_task("cleanup.run", Priority.LOW, Cleanup)
def run(payload: Cleanup) -> None:
    effects.append("cleanup", payload.model_dump())
