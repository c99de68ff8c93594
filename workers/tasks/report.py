"""report.generate (HIGH): render a report file."""

from __future__ import annotations

from pydantic import BaseModel, Field

from sluice.priorities import Priority
from workers import effects
from workers.base import sluice_task


class Report(BaseModel):
    report: str = Field(min_length=1)
    period: str = "daily"


@sluice_task("report.generate", Priority.HIGH, Report)
def generate(payload: Report) -> None:
    effects.append("report", payload.model_dump())
