"""The dead-letter store: models, migrations, store, recorder (never lose a record), replay."""

from dlq.models import DeadLetter, Status
from dlq.store import DeadLetterStore, Filters

__all__ = ["DeadLetter", "DeadLetterStore", "Filters", "Status"]
