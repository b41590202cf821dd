"""The durable schema, in one place, as numbered migrations.

A database records the last migration applied (SQLite's `user_version`). At start every newer
migration runs, each in its own transaction, in order; a database written by a newer gateway
than this one is refused rather than guessed at. Add a change as a new migration at the end;
never edit one that has shipped.

Migration 1 is the schema as it stood when migrations began. Its statements are all
`IF NOT EXISTS`, so a database made before then (user_version 0, some tables present) is
brought to it safely; the audit columns added along the way are added where missing.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    version: int
    what: str
    script: str
    # Run after the script, in the same transaction, for changes SQL alone cannot make
    # conditionally (a column added only where it is missing).
    then: Callable[[sqlite3.Connection], None] | None = None


def _audit_chain_columns(conn: sqlite3.Connection) -> None:
    present = {row[1] for row in conn.execute("PRAGMA table_info(audit)")}
    for name in ("source", "user_agent", "prev_hash", "hash"):
        if name not in present:
            conn.execute(f"ALTER TABLE audit ADD COLUMN {name} TEXT")


BASELINE = """
CREATE TABLE IF NOT EXISTS telemetry (
    siren_id  TEXT NOT NULL,
    ts        REAL NOT NULL,      -- gateway receive time, seconds since epoch (UTC)
    device_ts REAL,               -- the controller's clock, if reported
    faults    TEXT NOT NULL,      -- JSON list
    data      TEXT NOT NULL       -- JSON object of point name -> value
);
CREATE INDEX IF NOT EXISTS telemetry_by_siren ON telemetry (siren_id, ts);
CREATE INDEX IF NOT EXISTS telemetry_by_time ON telemetry (ts);

CREATE TABLE IF NOT EXISTS audit (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       REAL NOT NULL,
    username TEXT NOT NULL,
    role     TEXT,
    action   TEXT NOT NULL,
    target   TEXT,
    details  TEXT NOT NULL,     -- JSON
    outcome  TEXT NOT NULL,
    source   TEXT,              -- the client's address (or "gateway" for its own actions)
    user_agent TEXT,
    prev_hash TEXT,             -- the previous entry's hash: a chain (audit.py)
    hash     TEXT
);
CREATE TRIGGER IF NOT EXISTS audit_is_append_only_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_is_append_only_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

CREATE TABLE IF NOT EXISTS activations (
    id         INTEGER PRIMARY KEY,
    data       TEXT NOT NULL,   -- JSON: request, class, signal, times, state
    state      TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS activation_results (
    activation_id INTEGER NOT NULL,
    siren_id      TEXT NOT NULL,
    data          TEXT NOT NULL, -- JSON: status, reason, timings
    PRIMARY KEY (activation_id, siren_id)
);

CREATE TABLE IF NOT EXISTS alerts (
    id       INTEGER PRIMARY KEY,
    state    TEXT NOT NULL,
    data     TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS schedules (
    id         TEXT PRIMARY KEY,
    source     TEXT NOT NULL,      -- config (the site file) or api
    data       TEXT NOT NULL,      -- the plan, JSON
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS schedule_occurrences (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    plan_id      TEXT NOT NULL,
    kind         TEXT NOT NULL,    -- planned, or run_now
    scheduled_at REAL NOT NULL,    -- UTC epoch seconds of the plan's start
    local_date   TEXT NOT NULL,
    state        TEXT NOT NULL,
    notices      TEXT NOT NULL DEFAULT '[]',
    fired_at     REAL,
    base_at      REAL,             -- the start actually used (later than planned if fired late)
    steps        TEXT NOT NULL DEFAULT '{}',
    ended_at     REAL,
    note         TEXT NOT NULL DEFAULT '',
    UNIQUE (plan_id, kind, scheduled_at)
);

CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,  -- the notification id receivers deduplicate on
    channel    TEXT NOT NULL,         -- e.g. webhook:<url>, mqtt:schedule
    body       TEXT NOT NULL,         -- JSON
    created_at REAL NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    next_at    REAL NOT NULL,
    state      TEXT NOT NULL          -- pending, delivered, failed
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (channel, state, seq);

CREATE TABLE IF NOT EXISTS password_upgrades (
    username        TEXT PRIMARY KEY,
    replaces_sha256 TEXT NOT NULL,  -- sha256 of the site file's hash this one replaces
    password_hash   TEXT NOT NULL,
    upgraded_at     REAL NOT NULL
);
"""

WORK_ORDERS = """
CREATE TABLE work_orders (
    id         INTEGER PRIMARY KEY,
    siren_id   TEXT NOT NULL,
    state      TEXT NOT NULL,
    created_at REAL NOT NULL,
    data       TEXT NOT NULL  -- JSON: maintenance.model.WorkOrder.record()
);
CREATE INDEX work_orders_siren ON work_orders (siren_id, id);
CREATE INDEX work_orders_state ON work_orders (state, id);
"""

INSPECTIONS = """
CREATE TABLE inspection_tasks (
    id           INTEGER PRIMARY KEY,
    plan_id      TEXT NOT NULL,
    siren_id     TEXT NOT NULL,
    scheduled_at REAL NOT NULL,
    state        TEXT NOT NULL,
    data         TEXT NOT NULL,  -- JSON: maintenance.model.InspectionTask.record()
    UNIQUE (plan_id, scheduled_at, siren_id)  -- an occurrence makes each siren's task once
);
CREATE INDEX inspection_tasks_state ON inspection_tasks (state, id);
"""

# A siren's history (its timeline, the maintenance report) is read by siren and time.
HISTORY_INDEXES = """
ALTER TABLE alerts ADD COLUMN siren_id TEXT
    GENERATED ALWAYS AS (json_extract(data, '$.siren_id')) VIRTUAL;
ALTER TABLE alerts ADD COLUMN raised_at REAL
    GENERATED ALWAYS AS (json_extract(data, '$.raised_at')) VIRTUAL;
CREATE INDEX alerts_siren ON alerts (siren_id, raised_at);
CREATE INDEX alerts_raised ON alerts (raised_at);
CREATE INDEX activation_results_siren ON activation_results (siren_id, activation_id);
CREATE INDEX inspection_tasks_siren ON inspection_tasks (siren_id, scheduled_at);
CREATE INDEX work_orders_created ON work_orders (created_at);
"""

ASSETS = """
CREATE TABLE assets (
    siren_id TEXT PRIMARY KEY,
    record   TEXT NOT NULL,  -- JSON: the register's fields as they are now
    seed     TEXT NOT NULL   -- JSON: the site file's values when last read
);
CREATE TABLE asset_changes (
    id       INTEGER PRIMARY KEY,
    siren_id TEXT NOT NULL,
    at       REAL NOT NULL,
    by       TEXT NOT NULL,  -- a user, or "site file"
    changes  TEXT NOT NULL   -- JSON: {field: [old, new]}
);
CREATE INDEX asset_changes_siren ON asset_changes (siren_id, id);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "baseline: telemetry, audit, activations, alerts, schedules, outbox, "
                 "password upgrades", BASELINE, _audit_chain_columns),
    Migration(2, "work orders", WORK_ORDERS),
    Migration(3, "inspection tasks", INSPECTIONS),
    Migration(4, "indexes for a siren's history", HISTORY_INDEXES),
    Migration(5, "asset register", ASSETS),
)
CURRENT = MIGRATIONS[-1].version


class SchemaTooNew(RuntimeError):
    """The database was written by a newer gateway: running this one could corrupt it."""


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Bring the database to CURRENT; the versions applied."""
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if found > CURRENT:
        raise SchemaTooNew(f"the database is at schema version {found}; this gateway knows "
                           f"up to {CURRENT}: run the newer gateway, or restore a backup")
    applied = []
    for migration in MIGRATIONS:
        if migration.version <= found:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(migration.script):
                conn.execute(statement)
            if migration.then is not None:
                migration.then(conn)
            conn.execute(f"PRAGMA user_version = {migration.version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("database schema: migration %d applied (%s)", migration.version,
                 migration.what)
        applied.append(migration.version)
    return applied


def _statements(script: str) -> list[str]:
    """The script's statements, one by one (executescript would commit our transaction)."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete statement in a migration: {pending!r}")
    return statements
