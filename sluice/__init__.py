"""The Sluice kernel: settings, priorities, errors, Redis key names, connections, the Celery
app (`sluice.app:app`) and the CLI. It never imports the domain packages."""

from sluice.errors import SluiceError
from sluice.priorities import PressureLevel, Priority
from sluice.settings import Settings, get_settings

__all__ = ["Priority", "PressureLevel", "SluiceError", "Settings", "get_settings"]
