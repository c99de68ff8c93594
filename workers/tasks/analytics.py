"""analytics.track (LOW): record an analytics event."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

from sluice.priorities import Priority
from workers import effects
from workers.base import sluice_task


class Track(BaseModel):
    event: str = Field(min_length=1)
    user_id: str = ""
    properties: dict[str, Any] = Field(default_factory=dict)
    work_s: float = Field(0.0, ge=0, le=60, description="simulated processing time")


@sluice_task("analytics.track", Priority.LOW, Track)
def track(payload: Track) -> None:
    time.sleep(payload.work_s)
    effects.append("analytics", {"event": payload.event, "user_id": payload.user_id})
