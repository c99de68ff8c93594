"""data.sync (NORMAL): sync records from a source to a destination."""

from __future__ import annotations

from pydantic import BaseModel, Field

from sluice.priorities import Priority
from workers import effects
from workers.base import sluice_task


class DataSync(BaseModel):
    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)
    records: int = Field(0, ge=0)


@sluice_task("data.sync", Priority.NORMAL, DataSync)
def sync(payload: DataSync) -> None:
    effects.append("data", payload.model_dump())
