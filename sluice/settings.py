"""The one settings class. Every knob is an environment variable with the `SLUICE_` prefix.

An inconsistent configuration fails at load time with a `ConfigError` that names the
environment variable to fix, rather than surfacing later as a duplicated or lost job.
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sluice.errors import ConfigError
from sluice.priorities import Priority

__all__ = ["Settings", "get_settings", "load_settings", "env_name", "unknown_variables"]

ENV_PREFIX = "SLUICE_"


def env_name(field: str) -> str:
    """The environment variable that sets `field`."""
    return ENV_PREFIX + field.upper()


class Settings(BaseSettings):
    """Sluice configuration; read from `SLUICE_*` environment variables."""

    # `.env` in the working directory too (`make up` writes its generated Redis URL and
    # secret key there), so the CLI in the project folder reaches what `make up` started;
    # real environment variables win over it.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True,
                                      env_file=".env", env_file_encoding="utf-8")

    # Connections (secrets: never logged; `safe_dict()` masks them).
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    database_url: SecretStr = SecretStr("sqlite:///sluice.db")
    #: Fernet key(s) that seal the secret fields of every job (see sluice.sealed): one key,
    #: or `NEW,OLD,...` while rotating (the first seals, every one opens).
    secret_key: SecretStr | None = None
    redis_socket_timeout: float = Field(2.0, gt=0)

    # Pressure gate (DESIGN.md, Pressure levels).
    pressure_warning: int = Field(500, gt=0)
    pressure_critical: int = Field(1000, gt=0)
    pressure_shed: int = Field(5000, gt=0)
    pressure_margin: float = Field(0.10, ge=0, lt=1)
    pressure_dwell: float = Field(2.0, ge=0)
    pressure_interval: float = Field(0.5, gt=0)

    # Broker and tasks. Backoff cap + time limit must stay below the visibility timeout,
    # or Redis hands a job that is still waiting for its retry to a second worker.
    visibility_timeout: int = Field(3600, gt=0)
    unacked_restore_interval: float = Field(10.0, gt=0)
    unacked_restore_throttle: float = Field(10.0, gt=0)
    retry_backoff_max: int = Field(600, gt=0)
    task_time_limit: int = Field(300, gt=0)
    task_soft_time_limit: int = Field(270, gt=0)
    worker_eta_task_limit: int = Field(1000, gt=0)
    drain_seconds: float = Field(25.0, ge=0)
    idempotency_ttl: int = Field(86400, gt=0)
    # Deadlines: the longest a job of each priority may wait before it starts. The gate
    # refuses a job whose predicted wait exceeds it; a job not started by then is dropped.
    max_wait_high: float = Field(10.0, gt=0)
    max_wait_normal: float = Field(60.0, gt=0)
    max_wait_low: float = Field(300.0, gt=0)
    #: weights of tenants' fair shares under pressure (JSON, e.g. {"acme": 2}; default 1)
    tenant_weights: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    retry_backoff_base: int | None = Field(None, ge=0)  # overrides every task's base; 0 = none
    retry_jitter: bool = True

    # Dead letters and schedules.
    spool_path: Path = Path("sluice-spool.jsonl")
    data_dir: Path = Path("sluice-data")
    breaker_fail_max: int = Field(5, gt=0)
    breaker_reset_timeout: float = Field(30.0, gt=0)
    breaker_slow_seconds: float = Field(3.0, gt=0)
    breaker_window: int = Field(20, gt=0)
    reconcile_interval: float = Field(60.0, gt=0)
    ledger_grace_seconds: float = Field(30.0, gt=0)  # a job older than this is checked
    ledger_confirm_seconds: float = Field(5.0, gt=0)  # missing this long: lost, re-sent
    dlq_retry_interval: float = Field(900.0, gt=0)
    dlq_purge_interval: float = Field(86400.0, gt=0)
    dlq_retry_base: float = Field(900.0, gt=0)
    dlq_retry_horizon: float = Field(86400.0, gt=0)
    dlq_retention_days: float = Field(7.0, gt=0)
    beat_lock_timeout: int | None = Field(None, gt=0)

    # Worker liveness: the readiness key is renewed every interval and expires after the TTL.
    worker_heartbeat_interval: float = Field(5.0, gt=0)
    worker_heartbeat_ttl: float = Field(15.0, gt=0)

    # The application's own task modules (JSON list, e.g. ["myapp.tasks"]): imported by
    # workers, beat, the server and the CLI beside Sluice's, so all of them know its tasks.
    task_modules: list[str] = Field(default_factory=list)

    # Observability.
    record_waits: bool = False  # keep submit->start waits in Redis (demo, benchmarks)
    metrics_port: int = Field(9808, gt=0, lt=65536)

    # HTTP server and console (`sluice server`, ops.server). The tokens are secrets: never
    # logged. A JSON object {"<token>": {"role": "submit" | "operator", "tenant": "<optional>",
    # "name": "<optional, shown in the audit log>"}}, inline or in a file (mounted secrets).
    api_tokens: SecretStr | None = None
    api_tokens_file: Path | None = None
    server_host: str = "127.0.0.1"
    server_port: int = Field(8808, gt=0, lt=65536)
    server_max_body: int = Field(1_048_576, gt=0)  # bytes; a larger request gets 413
    server_flower_url: str | None = None  # the console links a dead letter to its Flower page

    # Application schedules: a TOML file of `[schedules.<name>]` tables that beat fires
    # through the gate (schedules.definitions); validated when beat starts.
    schedules_file: Path | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        self._check_thresholds()
        self._check_visibility()
        self._check_tls()
        if self.worker_heartbeat_ttl < 2 * self.worker_heartbeat_interval:
            raise ValueError(
                f"SLUICE_WORKER_HEARTBEAT_TTL ({self.worker_heartbeat_ttl}) must be at least "
                f"twice SLUICE_WORKER_HEARTBEAT_INTERVAL ({self.worker_heartbeat_interval}), "
                "or one late renewal reads as a dead worker")
        return self

    def _check_thresholds(self) -> None:
        if not self.pressure_warning < self.pressure_critical:
            raise ValueError(
                f"SLUICE_PRESSURE_WARNING ({self.pressure_warning}) must be below "
                f"SLUICE_PRESSURE_CRITICAL ({self.pressure_critical})")
        if not self.pressure_critical < self.pressure_shed:
            raise ValueError(
                f"SLUICE_PRESSURE_CRITICAL ({self.pressure_critical}) must be below "
                f"SLUICE_PRESSURE_SHED ({self.pressure_shed})")

    def _check_visibility(self) -> None:
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError(
                f"SLUICE_TASK_SOFT_TIME_LIMIT ({self.task_soft_time_limit}) must be below "
                f"SLUICE_TASK_TIME_LIMIT ({self.task_time_limit})")
        total = self.retry_backoff_max + self.task_time_limit
        if total >= self.visibility_timeout:
            raise ValueError(
                f"SLUICE_RETRY_BACKOFF_MAX ({self.retry_backoff_max}) + SLUICE_TASK_TIME_LIMIT "
                f"({self.task_time_limit}) = {total}s must be below SLUICE_VISIBILITY_TIMEOUT "
                f"({self.visibility_timeout}s), or Redis redelivers jobs still waiting to retry")

    def _check_tls(self) -> None:
        url = urlsplit(self.redis_url.get_secret_value())
        if url.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"SLUICE_REDIS_URL must start with redis://, rediss:// or unix:// "
                             f"(got {url.scheme or 'no'} scheme)")
        reqs = parse_qs(url.query).get("ssl_cert_reqs", ["required"])[0].lower()
        if url.scheme == "rediss" and reqs not in ("required", "cert_required"):
            raise ValueError("SLUICE_REDIS_URL uses rediss:// with ssl_cert_reqs="
                             f"{reqs}: certificate checks must stay on (ssl_cert_reqs=required)")

    @property
    def thresholds(self) -> tuple[int, int, int]:
        """(warning, critical, shed) depth thresholds."""
        return (self.pressure_warning, self.pressure_critical, self.pressure_shed)

    def max_wait_for(self, priority: Priority) -> float | None:
        """Default deadline for a job of `priority`; CRITICAL has none."""
        return {Priority.CRITICAL: None, Priority.HIGH: self.max_wait_high,
                Priority.NORMAL: self.max_wait_normal, Priority.LOW: self.max_wait_low}[priority]

    def safe_dict(self) -> dict[str, object]:
        """The settings with secrets masked, for `sluice doctor` and logs."""
        out = self.model_dump(mode="json")
        out["redis_url"] = mask_url(self.redis_url.get_secret_value())
        out["database_url"] = mask_url(self.database_url.get_secret_value())
        return out


def mask_url(url: str) -> str:
    """A URL safe to print: the password in the userinfo (`redis://:secret@host`) and in any
    query parameter that names one (`?password=...`, `?pass=...`) become `***`."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:***@{host}"
    query = "&".join(_mask_param(p) for p in parts.query.split("&")) if parts.query else ""
    if netloc != parts.netloc:
        url = url.replace(parts.netloc, netloc, 1)
    if query != parts.query:
        url = url.replace("?" + parts.query, "?" + query, 1)
    return url


def _mask_param(param: str) -> str:
    name, sep, _value = param.partition("=")
    secret = any(word in name.lower() for word in ("password", "pass", "secret", "token"))
    return f"{name}{sep}***" if secret and sep else param


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One message per `SLUICE_*` variable that is no setting, naming the closest one."""
    valid = {env_name(name) for name in Settings.model_fields}
    out = []
    for var in sorted(k for k in environ if k.upper().startswith(ENV_PREFIX)):
        if var.upper() in valid or var.upper() in NOT_SETTINGS:
            continue
        close = difflib.get_close_matches(var.upper(), sorted(valid), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        out.append(f"{var} is not a Sluice setting{hint}")
    return out


#: SLUICE_* variables read by tools around Sluice, not by this class.
NOT_SETTINGS = frozenset({"SLUICE_CHAOS_FULL"})


def load_settings(**overrides: object) -> Settings:
    """Read the environment (plus `overrides`); raise ConfigError naming the bad setting,
    including a misspelt `SLUICE_` variable, which would otherwise be silently ignored."""
    typos = unknown_variables(os.environ)
    if typos:
        raise ConfigError("invalid configuration: " + "; ".join(typos))
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if p != "__root__"]
        where = env_name(loc[0]) + ": " if loc else ""
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(f"{where}{msg}")
    return "invalid configuration: " + "; ".join(problems)


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests call `get_settings.cache_clear()`."""
    return load_settings()
