"""The machine's PostgreSQL and Redis, for the production-shaped deployment test.

Both run on the machine, as this project's machines (and so CI) have them: PostgreSQL on
127.0.0.1:5432 with trust authentication for the user ``postgres``, Redis on 127.0.0.1:6379.
A test session gets a database of its own (created empty, dropped after) and a Redis key prefix
of its own (only its keys are deleted after). ``require_services`` fails the test under
``CI=true`` when one is missing, and elsewhere skips it saying what to start.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field

import pytest

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_DB = 11  # the tests' own Redis database; within it, each session has its own key prefix

START_COMMANDS = {
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "Redis": (
        'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
        "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
    ),
}


def _admin_connection():  # type: ignore[no-untyped-def]
    import psycopg2

    conn = psycopg2.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=5
    )
    conn.autocommit = True  # CREATE and DROP DATABASE run outside a transaction
    return conn


def _redis(db: int = REDIS_DB):  # type: ignore[no-untyped-def]
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries: a server that is not there is reported at once.
    retry = Retry(NoBackoff(), 0)
    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_timeout=5, retry=retry)


def missing_services() -> dict[str, str]:
    """The services that do not answer, each with where and what went wrong."""
    import psycopg2
    import redis

    missing = {}
    try:
        _admin_connection().close()
    except psycopg2.OperationalError as exc:
        missing["PostgreSQL"] = f"at {PG_HOST}:{PG_PORT} ({' '.join(str(exc).split())})"
    try:
        _redis().ping()
    except redis.exceptions.RedisError as exc:
        missing["Redis"] = f"at {REDIS_HOST}:{REDIS_PORT} ({exc})"
    return missing


def require_services() -> None:
    """Fail (under ``CI=true``) or skip (elsewhere) unless PostgreSQL and Redis answer."""
    missing = missing_services()
    if not missing:
        return
    message = "the production-shaped deployment needs PostgreSQL and Redis on this machine. " + (
        " ".join(
            f"{name} does not answer {where}; start it with: {START_COMMANDS[name]}."
            for name, where in missing.items()
        )
    )
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@dataclass
class PostgresDatabase:
    """A database of its own on the machine's PostgreSQL; ``drop()`` removes it."""

    name: str = field(default_factory=lambda: f"flowtask_test_{uuid.uuid4().hex[:12]}")

    @property
    def url(self) -> str:
        """The SQLAlchemy URL Airflow's metadata database setting takes."""
        return f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.name}"

    def create(self) -> PostgresDatabase:
        conn = _admin_connection()
        try:
            with conn.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            conn.close()
        return self

    def drop(self) -> None:
        """Drop it, ending whatever still holds a connection to it."""
        conn = _admin_connection()
        try:
            with conn.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            conn.close()


@dataclass
class RedisKeys:
    """A key prefix of its own in the tests' Redis database: a Celery broker that shares the
    server with anything else, and ``delete()`` removes only its keys."""

    prefix: str = field(default_factory=lambda: f"flowtask-test-{uuid.uuid4().hex[:12]}:")
    db: int = REDIS_DB

    @property
    def url(self) -> str:
        return f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.db}"

    def keys(self) -> list[bytes]:
        return list(_redis(self.db).scan_iter(match=f"{self.prefix}*", count=1000))

    def delete(self) -> int:
        keys = self.keys()
        return int(_redis(self.db).delete(*keys)) if keys else 0
