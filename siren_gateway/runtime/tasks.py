"""Stopping tasks reliably."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel tasks and wait until every one has finished, cancelling again if need be.

    On Python 3.11, asyncio.wait_for (used inside pymodbus) returns a result that arrived in the
    same loop iteration as a cancel and drops the CancelledError, so a single cancel can leave a
    task running; owners also end their loops with a flag, and this covers the rest.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
