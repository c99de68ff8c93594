"""export.csv (NORMAL): write a CSV export."""

from __future__ import annotations

from pydantic import BaseModel, Field

from sluice.priorities import Priority
from workers import effects
from workers.base import sluice_task


class CsvExport(BaseModel):
    dataset: str = Field(min_length=1)
    rows: int = Field(0, ge=0, le=1_000_000)


@sluice_task("export.csv", Priority.NORMAL, CsvExport)
def export_csv(payload: CsvExport) -> None:
    effects.append("export", payload.model_dump())
