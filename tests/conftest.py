"""Session fixtures: a real redis-server and a real PostgreSQL; per-test environments;
factories for real celery worker / beat processes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from cryptography.fernet import Fernet

from ops.state import reset_process_state
from tests.services import CeleryProcess, PostgresServer, RedisServer, wait_for

QUEUES = "critical,high,normal,low"


#: seals secret fields in the tests (a task with secret fields refuses to be sent without one)
TEST_SECRET_KEY = Fernet.generate_key().decode()


def reset_all() -> None:
    """Forget every process-wide cache that depends on the environment."""
    reset_process_state()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    server.execute("CREATE DATABASE sluice_template")
    from sqlalchemy import create_engine

    from dlq.migrate import upgrade

    eng = create_engine(server.url("sluice_template"))
    upgrade(eng)
    eng.dispose()
    yield server
    server.remove()


def fresh_pg_database(server: PostgresServer) -> str:
    """A new, migrated database (copied from the template: fast)."""
    name = "t_" + uuid.uuid4().hex[:12]
    server.execute(f"CREATE DATABASE {name} TEMPLATE sluice_template")
    return server.url(name)


@dataclass
class Env:
    """What one test runs against; `vars` are the SLUICE_* variables child processes get."""

    redis: RedisServer
    database_url: str
    data_dir: Path
    tmp: Path
    vars: dict[str, str] = field(default_factory=dict)

    @property
    def client(self) -> redis.Redis:
        return self.redis.client()

    def process_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env.update(self.vars)
        env.update(extra)
        env["PYTHONUNBUFFERED"] = "1"
        return env


def _make_env(redis_server: RedisServer, database_url: str, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch, **settings: str) -> Env:
    redis_server.client().flushall()
    env = Env(redis_server, database_url, tmp_path / "data", tmp_path)
    env.vars = {
        "SLUICE_REDIS_URL": redis_server.url,
        "SLUICE_DATABASE_URL": database_url,
        "SLUICE_DATA_DIR": str(env.data_dir),
        "SLUICE_SPOOL_PATH": str(tmp_path / "spool.jsonl"),
        "SLUICE_PRESSURE_INTERVAL": "0.1",
        # deadlines long enough that a slow CI machine never expires a job in a test that is
        # not about deadlines (those set their own)
        "SLUICE_MAX_WAIT_HIGH": "600", "SLUICE_MAX_WAIT_NORMAL": "600",
        "SLUICE_MAX_WAIT_LOW": "600",
        "SLUICE_SECRET_KEY": TEST_SECRET_KEY,
        **{f"SLUICE_{k.upper()}": str(v) for k, v in settings.items()},
    }
    for key in [k for k in os.environ if k.startswith("SLUICE_")]:
        monkeypatch.delenv(key)
    for key, value in env.vars.items():
        monkeypatch.setenv(key, value)
    reset_all()
    if database_url.startswith("sqlite"):
        from dlq.migrate import upgrade

        upgrade()
    return env


@pytest.fixture
def sluice_env(redis_server: RedisServer, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """Redis flushed, a migrated SQLite store, SLUICE_* set for this process and children."""
    env = _make_env(redis_server, f"sqlite:///{tmp_path / 'sluice.db'}", tmp_path, monkeypatch)
    yield env
    reset_all()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_env(request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """`sluice_env` on each supported store: SQLite and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'sluice.db'}"
    else:
        url = fresh_pg_database(request.getfixturevalue("postgres"))
    env = _make_env(redis_server, url, tmp_path, monkeypatch)
    yield env
    reset_all()


class Processes:
    """Starts real celery workers / beats for one test and stops them all afterwards."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.started: list[CeleryProcess] = []

    def worker(self, queues: str = QUEUES, concurrency: int = 1, name: str | None = None,
               wait: bool = True, pool: str = "prefork", **settings: str) -> CeleryProcess:
        name = name or f"w{len(self.started)}-{uuid.uuid4().hex[:6]}@test"
        extra = {f"SLUICE_{k.upper()}": str(v) for k, v in settings.items()}
        proc = CeleryProcess(
            ["worker", "-Q", queues, "-c", str(concurrency), "-P", pool, "-n", name,
             "-l", "info", "--without-mingle", "--without-gossip"],
            self.env.process_env(REMAP_SIGTERM="SIGQUIT", **extra),
            self.env.tmp / "logs" / f"{name}.log").start()
        self.started.append(proc)
        if wait:
            from sluice import keys

            wait_for(lambda: self.env.client.get(keys.worker_state(name)) == b"ready",
                     timeout=30, what=f"worker {name} ready\n{proc.output()[-3000:]}")
        return proc

    def beat(self, name: str = "beat", **settings: str) -> CeleryProcess:
        extra = {f"SLUICE_{k.upper()}": str(v) for k, v in settings.items()}
        proc = CeleryProcess(["beat", "-l", "info", "-s", str(self.env.tmp / f"{name}.db")],
                             self.env.process_env(**extra),
                             self.env.tmp / "logs" / f"{name}-{uuid.uuid4().hex[:4]}.log").start()
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            proc.stop(timeout=15)


@pytest.fixture
def processes(sluice_env: Env) -> Iterator[Processes]:
    procs = Processes(sluice_env)
    yield procs
    procs.stop_all()
