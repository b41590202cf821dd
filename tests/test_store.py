"""The store's schema: numbered migrations bring any earlier database to the current schema,
each in one transaction; a newer database is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from siren_gateway.store import schema
from siren_gateway.store.database import Database
from siren_gateway.store.schema import CURRENT, Migration, SchemaTooNew, migrate

TABLES = {"telemetry", "audit", "activations", "activation_results", "alerts", "schedules",
          "schedule_occurrences", "outbox", "password_upgrades"}


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


async def test_a_new_database_gets_every_table_at_the_current_version(tmp_path: Path) -> None:
    db = Database(tmp_path / "new.db")
    await db.start()
    version = await db.run(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
    tables = await db.run(_tables)
    await db.stop()
    assert version == CURRENT
    assert tables >= TABLES


def test_a_database_from_before_migrations_keeps_its_rows_and_gains_columns(
        tmp_path: Path) -> None:
    conn = _connect(tmp_path / "old.db")
    # As an early gateway left it: no version, an audit table without the hash chain.
    conn.executescript("""
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


def test_a_failing_migration_leaves_the_database_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = _connect(tmp_path / "db.db")
    migrate(conn)
    broken = Migration(CURRENT + 1, "broken", "CREATE TABLE half_done (x INTEGER);\n"
                                              "INSERT INTO no_such_table VALUES (1);\n")
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, broken))
    monkeypatch.setattr(schema, "CURRENT", CURRENT + 1)
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        migrate(conn)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == CURRENT
    assert "half_done" not in _tables(conn)
