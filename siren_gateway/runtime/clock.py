"""Time: the clock the engines read and sleep on (injectable, so tests move time instead of
waiting for it), and the one way a moment is written out."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall time, Unix seconds: what is recorded and shown."""
        ...

    def monotonic(self) -> float:
        """Seconds that never jump: what durations (silence, hold times) are measured in."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


def utc(clock: Clock) -> datetime:
    """The clock's wall time as an aware UTC datetime."""
    return datetime.fromtimestamp(clock.now(), UTC)


def iso_utc(moment: float | None) -> str | None:
    """A Unix time as ISO 8601 in UTC; None (and 0, "never") as None."""
    return datetime.fromtimestamp(moment, UTC).isoformat() if moment else None
