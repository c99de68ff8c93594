"""`sluice ...`: submit, inspect and operate. Exit codes: 0 ok, 1 failure, 2 usage, 3 rejected."""

from __future__ import annotations

from ops.cli import dead_letters, jobs, operate, server, workflows  # noqa: F401  (they register the commands)
from ops.cli.app import app
from ops.cli.output import FAILURE, REJECTED, USAGE, err, fail
from sluice.errors import Rejected, SluiceError, UsageError

__all__ = ["app", "main"]


def exit_code(exc: SluiceError) -> int:
    """2 for a usage error, 3 for a rejection by the gate, 1 for anything else."""
    if isinstance(exc, Rejected):
        return REJECTED
    return USAGE if isinstance(exc, UsageError) else FAILURE


def main() -> None:
    """Console entry point: turns Sluice errors into messages and exit codes."""
    try:
        app()
    except Rejected as exc:
        err.print(f"rejected: {exc.reason} (level {getattr(exc.level, 'name', exc.level)}); "
                  f"Retry-After: {exc.retry_after_s:g}", highlight=False)
        raise SystemExit(REJECTED) from None
    except SluiceError as exc:
        fail(str(exc), exit_code(exc))
    except Exception as exc:  # Redis or the database down: one clear line, no traceback
        import redis
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, redis.RedisError):
            fail(f"Redis is unreachable ({type(exc).__name__}); check SLUICE_REDIS_URL")
        if isinstance(exc, SQLAlchemyError):
            fail(f"the database failed ({type(exc).__name__}); check SLUICE_DATABASE_URL")
        raise
