"""Fixtures for tests that run against both databases: SQLite in the test's folder, and a real
PostgreSQL server (SIREN_TEST_POSTGRES, default the machine's own on 127.0.0.1:5432 with trust
authentication), in a database each test creates and drops."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from siren_gateway.store.postgres import PostgresStore
from siren_gateway.store.repositories import RepositoryStore
from siren_gateway.store.sqlite import SqliteStore

POSTGRES_SERVER = os.environ.get("SIREN_TEST_POSTGRES",
                                 "postgresql://postgres@127.0.0.1:5432/postgres")


def _server_answers() -> str | None:
    try:
        with psycopg.connect(POSTGRES_SERVER, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc).strip()


_UNREACHABLE = _server_answers()
# As with the other servers: skipped on a developer's machine without one, never in CI
# (dev.py installs and starts one there).
needs_postgres = pytest.mark.skipif(_UNREACHABLE is not None and not os.environ.get("CI"),
                                    reason=f"no PostgreSQL at {POSTGRES_SERVER}: {_UNREACHABLE}")


def database_url(name: str) -> str:
    base, _, _ = POSTGRES_SERVER.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty database on the server, dropped after the test."""
    name = f"siren_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_SERVER, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        yield database_url(name)
    finally:
        with psycopg.connect(POSTGRES_SERVER, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


StoreFactory = Callable[[], RepositoryStore]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=needs_postgres)])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Makes stores on one database (each a new connection: a restart, or a second gateway)."""
    if request.param == "sqlite":
        path = tmp_path / "store.db"
        return lambda: SqliteStore(path)
    url = request.getfixturevalue("postgres_url")
    return lambda: PostgresStore(url)
