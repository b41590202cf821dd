"""Why the gateway refuses a request: one hierarchy for every engine.

Engines raise these with a sentence for the operator (and, where it helps, details such as the
activation a duplicate request would repeat); the API maps each kind to one HTTP status, in one
place (api/app.py). Engines never name HTTP.
"""

from __future__ import annotations

from typing import Any


class Refused(Exception):
    """A request the gateway will not carry out, and why."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(Refused):
    """What the request names does not exist (a siren, an activation, a plan ...)."""


class ConfirmationRequired(Refused):
    """The role may do it, but this request lacks the proof it needs (an emergency's
    confirmation token from a preview)."""


class Forbidden(Refused):
    """The role may not do this at all (a technician asking for an audible signal, or a test
    of a siren it has no work order for)."""


class Conflict(Refused):
    """A safety rule or the current state forbids it (a siren busy with an emergency, an
    occurrence already past, a plan defined in the site file)."""


class Invalid(Refused):
    """The request is well-formed but makes no sense (an unknown signal, a start too far
    ahead)."""


class StorageUnavailable(Refused):
    """The state database cannot be written: tests and exercises wait; emergencies go out."""
