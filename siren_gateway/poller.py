"""Polls every polled (Modbus) siren on its own schedule, with jitter and back-off after failures.

Each siren has its own task, so a slow or dead device only ever delays itself (on a shared
RS-485 line it costs its timeout, which the back-off keeps rare). Polls are scheduled on a fixed
grid rather than "interval after the last answer", so the rate stays true under load.
"""

from __future__ import annotations

import asyncio
import logging
import random

from siren_gateway.config import PollingConfig
from siren_gateway.fleet import Fleet
from siren_gateway.links.base import SirenLink
from siren_gateway.model import LinkError
from siren_gateway.tasks import cancel_and_wait

log = logging.getLogger(__name__)


def next_delay(interval_s: float, failures: int, polling: PollingConfig, rng: random.Random) -> float:
    """Seconds until the next poll: the interval, stretched exponentially once a device is offline."""
    delay = interval_s
    excess = failures - polling.offline_after_failures
    if excess >= 0:
        delay = min(polling.backoff_max_s, max(interval_s, interval_s * 2 ** (excess + 1)))
    jitter = polling.jitter_fraction
    return delay * (1 + rng.uniform(-jitter, jitter))


class Poller:
    def __init__(self, fleet: Fleet, links: dict[str, SirenLink], seed: int | None = None) -> None:
        self.fleet = fleet
        self.links = links
        self._rng = random.Random(seed)
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False

    def start(self) -> None:
        self._running = True
        for siren_id, link in self.links.items():
            if not link.polled:
                continue  # it reports by itself (MQTT); the sweep still watches its silence
            interval = self.fleet.states[siren_id].config.poll_interval_s
            self._tasks.append(asyncio.create_task(self._run(link, interval),
                                                   name=f"poll {siren_id}"))
        self._tasks.append(asyncio.create_task(self._sweep(), name="staleness sweep"))

    async def stop(self) -> None:
        """Stop every task, even one whose cancellation was swallowed (see cancel_and_wait):
        the running flag ends its loop at the next turn."""
        self._running = False
        await cancel_and_wait(self._tasks)
        self._tasks.clear()

    async def _run(self, link: SirenLink, interval_s: float) -> None:
        loop = asyncio.get_running_loop()
        polling = self.fleet.polling
        # First answers come quickly (within 5 s of start) ...
        await asyncio.sleep(self._rng.uniform(0, min(interval_s, 5.0)))
        first = True
        due = loop.time()
        while self._running:
            try:
                sample = await link.poll()
            except LinkError as exc:
                self.fleet.record_failure(link.siren_id, exc)
            except Exception as exc:  # never let one siren's surprise end its polling
                log.exception("poll of %s failed unexpectedly", link.siren_id)
                self.fleet.record_failure(link.siren_id, LinkError("internal", repr(exc)))
            else:
                self.fleet.record_sample(sample)
            failures = self.fleet.states[link.siren_id].consecutive_failures
            if first:
                # ... then each siren settles on its own phase of the whole interval, so a large
                # fleet is polled evenly instead of in bursts.
                due += self._rng.uniform(0, interval_s)
                first = False
            due += next_delay(interval_s, failures, polling, self._rng)
            now = loop.time()
            due = max(due, now)  # fell behind (slow device): poll now, don't burst to catch up
            await asyncio.sleep(due - now)

    async def _sweep(self) -> None:
        while self._running:
            await asyncio.sleep(1.0)
            self.fleet.sweep()
