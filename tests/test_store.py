"""The store's schema: numbered migrations bring any earlier database to the current schema,
each in one transaction; a newer database is refused. On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import psycopg
import pytest

from siren_gateway.store import schema
from siren_gateway.store.database import Connection
from siren_gateway.store.errors import StorageError
from siren_gateway.store.postgres import PostgresConnection, PostgresStore
from siren_gateway.store.schema import CURRENT, Migration, PerDialect, SchemaTooNew, migrate
from siren_gateway.store.sqlite import SqliteConnection, SqliteDatabase
from tests.databases import StoreFactory, needs_postgres

TABLES = {"telemetry", "audit", "activations", "activation_results", "alerts", "schedules",
          "schedule_occurrences", "outbox", "password_upgrades", "work_orders",
          "inspection_tasks", "assets", "asset_changes"}


def _tables(conn: Connection) -> set[str]:
    if conn.dialect == "sqlite":
        sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
    else:
        sql = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    return {r[0] for r in conn.execute(sql)}


def _connect(path: Path) -> SqliteConnection:
    return SqliteConnection(sqlite3.connect(path, isolation_level=None))


async def test_a_new_database_gets_every_table_at_the_current_version(
        new_store: StoreFactory) -> None:
    store = new_store()
    await store.start()
    version = await store.database.run(schema.schema_version)
    tables = await store.database.run(_tables)
    await store.stop()
    assert version == CURRENT
    assert tables >= TABLES


async def test_gateways_starting_together_migrate_once(new_store: StoreFactory) -> None:
    stores = [new_store() for _ in range(3)]
    await asyncio.gather(*(store.start() for store in stores))
    try:
        versions = await asyncio.gather(*(s.database.run(schema.schema_version) for s in stores))
        assert versions == [CURRENT] * 3
    finally:
        await asyncio.gather(*(store.stop() for store in stores))


def test_a_database_from_before_migrations_keeps_its_rows_and_gains_columns(
        tmp_path: Path) -> None:
    conn = _connect(tmp_path / "old.db")
    # As an early gateway left it: no version, an audit table without the hash chain.
    conn.raw.executescript("""
        CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
            username TEXT NOT NULL, role TEXT, action TEXT NOT NULL, target TEXT,
            details TEXT NOT NULL, outcome TEXT NOT NULL);
        INSERT INTO audit (at, username, action, details, outcome)
            VALUES (1.0, 'admin', 'login', '{}', 'ok');
        CREATE TABLE alerts (id INTEGER PRIMARY KEY, state TEXT NOT NULL, data TEXT NOT NULL);
        INSERT INTO alerts VALUES (7, 'active', '{}');
    """)
    assert migrate(conn) == [m.version for m in schema.MIGRATIONS]
    columns = {r[1] for r in conn.execute("PRAGMA table_info(audit)")}
    assert {"source", "user_agent", "prev_hash", "hash"} <= columns
    assert conn.execute("SELECT username FROM audit").fetchall() == [("admin",)]
    assert conn.execute("SELECT id FROM alerts").fetchall() == [(7,)]
    assert _tables(conn) >= TABLES
    assert migrate(conn) == []  # a second start applies nothing
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM audit")  # the triggers came with the baseline


def test_a_database_from_a_newer_gateway_is_refused(tmp_path: Path) -> None:
    conn = _connect(tmp_path / "newer.db")
    conn.execute(f"PRAGMA user_version = {CURRENT + 1}")
    with pytest.raises(SchemaTooNew, match=f"version {CURRENT + 1}"):
        migrate(conn)


@needs_postgres
def test_a_postgres_database_from_a_newer_gateway_is_refused(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as raw:
        conn = PostgresConnection(raw)
        migrate(conn)
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (CURRENT + 1,))
        with pytest.raises(SchemaTooNew, match=f"version {CURRENT + 1}"):
            migrate(conn)


BROKEN = Migration(CURRENT + 1, "broken", (
    PerDialect(sqlite="CREATE TABLE half_done (x INTEGER);",
               postgres="CREATE TABLE half_done (x BIGINT);"),
    "INSERT INTO no_such_table VALUES (1);"))


def test_a_failing_migration_leaves_the_database_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = _connect(tmp_path / "db.db")
    migrate(conn)
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, BROKEN))
    monkeypatch.setattr(schema, "CURRENT", CURRENT + 1)
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        migrate(conn)
    assert schema.schema_version(conn) == CURRENT
    assert "half_done" not in _tables(conn)


@needs_postgres
async def test_a_failing_postgres_migration_leaves_the_database_as_it_was(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = PostgresStore(postgres_url)
    await store.start()
    await store.stop()
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, BROKEN))
    monkeypatch.setattr(schema, "CURRENT", CURRENT + 1)
    store = PostgresStore(postgres_url)
    with pytest.raises(psycopg.errors.UndefinedTable):
        await store.start()
    await store.stop()
    with psycopg.connect(postgres_url, autocommit=True) as raw:
        conn = PostgresConnection(raw)
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == CURRENT
        assert "half_done" not in _tables(conn)


async def test_a_sqlite_file_that_cannot_be_opened_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    db = SqliteDatabase(tmp_path / "dir.db")
    with pytest.raises((StorageError, sqlite3.Error)):
        await db.start()
    await db.stop()
