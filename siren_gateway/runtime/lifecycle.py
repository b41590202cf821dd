"""One lifecycle for every long-lived part: `start()` then `stop()`, both awaited.

The composition root enters the parts in order through an AsyncExitStack, so stop runs in exact
reverse order and a start that fails halfway unwinds what had started. A part's `stop()` must be
safe after a `start()` that raised (it is called then too): a part may have started a task or
opened a file before failing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

log = logging.getLogger(__name__)


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@asynccontextmanager
async def running(name: str, part: Service) -> AsyncIterator[Service]:
    """Start `part`; stop it on leaving, and also when its own start fails."""
    try:
        await part.start()
    except BaseException:
        log.error("%s failed to start; stopping what it had started", name)
        try:
            await part.stop()
        except Exception:
            log.exception("%s: stop after a failed start failed too", name)
        raise
    log.debug("started %s", name)
    try:
        yield part
    finally:
        await part.stop()
        log.debug("stopped %s", name)
