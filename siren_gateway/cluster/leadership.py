"""The parts only the leader runs (the scheduler, activations, alerts and their notifications,
maintenance): started when this node takes the leadership, after the node's own parts; when it
loses it, stopped at once, and the node is told (the command line ends the process, so its
supervisor starts it again as a follower with its state read fresh from the database: a
demoted leader never carries stale state on, which is what makes a flapping link safe)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack

from siren_gateway.cluster.membership import Membership
from siren_gateway.runtime.lifecycle import Service, running
from siren_gateway.runtime.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class LeaderRole:
    def __init__(self, membership: Membership, parts: list[tuple[str, Service]],
                 on_demoted: Callable[[], None]) -> None:
        self.membership = membership
        self.parts = parts
        self.on_demoted = on_demoted
        self._ready = False  # the node's own parts are up: the leader's may start
        self._stack: AsyncExitStack | None = None
        self._task: asyncio.Task[None] | None = None
        self._stepping: asyncio.Task[None] | None = None
        self.active = False
        self.terms = 0
        membership.on_leadership(self._changed)

    def _changed(self, leader: bool) -> None:
        if not self._ready:
            return  # start() looks again
        if leader and self._task is None and self._stack is None:
            self._task = asyncio.create_task(self._take_over(), name="leader take-over")
        elif (not leader and (self._task is not None or self._stack is not None)
              and self._stepping is None):
            self._stepping = asyncio.create_task(self._step_down(), name="leader step-down")

    async def _take_over(self) -> None:
        stack = AsyncExitStack()
        try:
            for name, part in self.parts:
                await stack.enter_async_context(running(name, part))
        except asyncio.CancelledError:
            await stack.aclose()
            raise
        except Exception:
            log.exception("this node could not start the leader's parts; stepping down")
            await stack.aclose()
            self._task = None
            self.on_demoted()
            return
        self._stack, self.active = stack, True
        self.terms += 1
        log.warning("node %s leads (epoch %d): scheduler, activations, alerts and maintenance "
                    "run here", self.membership.node.id, self.membership.leader_epoch)

    async def _step_down(self) -> None:
        await self._close()
        log.error("node %s lost the leadership: its leader parts are stopped",
                  self.membership.node.id)
        self.on_demoted()

    async def _close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            await cancel_and_wait([task])
        stack, self._stack = self._stack, None
        self.active = False
        if stack is not None:
            await stack.aclose()

    async def start(self) -> None:
        self._ready = True
        if self.membership.leader:
            self._changed(True)

    async def stop(self) -> None:
        self._ready = False
        if self._stepping is not None:
            await cancel_and_wait([self._stepping])
        await self._close()
