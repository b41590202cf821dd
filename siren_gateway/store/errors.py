"""What a repository raises, whatever the database behind it."""

from __future__ import annotations


class StorageError(Exception):
    """A write or read the database refused (disk full, read-only, locked, gone).

    Callers keep what they could not write and try again; the database's health says whether
    storage works now."""


class DatabaseClosed(StorageError):
    """The database is not open (not yet started, or stopped)."""
