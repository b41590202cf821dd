"""Polls every polled (Modbus) siren on its own schedule, with jitter and back-off after failures.

A poll on the wire holds a worker task of its own, so a slow or dead device only ever delays
itself (on a shared RS-485 line it costs its timeout, which the back-off keeps rare). Polls are
scheduled on a fixed grid rather than "interval after the last answer", so the rate stays true
under load.
"""

from __future__ import annotations

import asyncio
import logging
import random

from siren_gateway.config.site import PollingConfig
from siren_gateway.links.base import SirenLink
from siren_gateway.live.fleet import Fleet
from siren_gateway.metrics import Instruments
from siren_gateway.model import LinkError
from siren_gateway.runtime.tasks import cancel_and_wait

log = logging.getLogger(__name__)


def next_delay(interval_s: float, failures: int, polling: PollingConfig, rng: random.Random) -> float:
    """Seconds until the next poll: the interval, stretched exponentially once a device is offline."""
    delay = interval_s
    excess = failures - polling.offline_after_failures
    if excess >= 0:
        delay = min(polling.backoff_max_s, max(interval_s, interval_s * 2 ** (excess + 1)))
    jitter = polling.jitter_fraction
    return delay * (1 + rng.uniform(-jitter, jitter))


class _Schedule:
    """One polled siren's place on the timetable."""

    __slots__ = ("due", "first", "interval_s", "link", "timer")

    def __init__(self, link: SirenLink, interval_s: float) -> None:
        self.link = link
        self.interval_s = interval_s
        self.due = 0.0
        self.first = True
        self.timer: asyncio.TimerHandle | None = None  # waiting for its next poll


# Workers kept waiting for the next due poll; one more poll at once starts another task.
MAX_IDLE_WORKERS = 32


class Poller:
    """Each siren waits for its next poll as one timer on the event loop; when it fires, an
    idle worker task takes the poll, or a new one starts if none is idle, so a slow or dead
    device only ever delays itself.

    Why timers and not a sleeping task per siren: a sleeping task (its coroutine frames, its
    future and timer) cost ~1.4 kB, a timer ~0.2 kB (bench/memory.py: -6 MiB at 5,000
    sirens). Why reused workers and not a task per poll: creating and registering a task on
    every poll cost more CPU than the old sleeping loop (bench/poll_throughput.py).
    """

    def __init__(self, fleet: Fleet, links: dict[str, SirenLink],
                 instruments: Instruments | None = None, seed: int | None = None) -> None:
        self.fleet = fleet
        instruments = instruments or Instruments()
        self._poll_ok = instruments.poll_ok
        self._poll_failed = instruments.poll_failed
        self.links = links
        self._rng = random.Random(seed)
        self._schedules: list[_Schedule] = []
        self._workers: set[asyncio.Task[None]] = set()
        self._idle: list[asyncio.Future[_Schedule]] = []  # workers waiting for a poll
        self._busy = 0  # polls on the wire now
        self._sweeper: asyncio.Task[None] | None = None
        self._running = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._running = True
        now = loop.time()
        for siren_id, link in self.links.items():
            if not link.polled:
                continue  # it reports by itself (MQTT); the sweep still watches its silence
            schedule = _Schedule(link, self.fleet.states[siren_id].config.poll_interval_s)
            # First answers come quickly (within 5 s of start) ...
            schedule.due = now + self._rng.uniform(0, min(schedule.interval_s, 5.0))
            schedule.timer = loop.call_at(schedule.due, self._fire, schedule)
            self._schedules.append(schedule)
        self._sweeper = asyncio.create_task(self._sweep(), name="staleness sweep")

    async def stop(self) -> None:
        """Stop every timer and task, even a poll whose cancellation was swallowed (see
        cancel_and_wait): the running flag keeps it from scheduling another."""
        self._running = False
        for schedule in self._schedules:
            if schedule.timer is not None:
                schedule.timer.cancel()
                schedule.timer = None
        await cancel_and_wait([*self._workers, *([self._sweeper] if self._sweeper else [])])
        self._workers.clear()
        self._idle.clear()
        self._schedules.clear()
        self._sweeper = None

    def scheduled(self) -> int:
        """Sirens with a poll waiting or on the wire (every polled siren, while running)."""
        return sum(1 for s in self._schedules if s.timer is not None) + self._busy

    def _fire(self, schedule: _Schedule) -> None:
        schedule.timer = None
        if not self._running:
            return
        self._busy += 1
        while self._idle:
            waiter = self._idle.pop()
            if not waiter.done():  # (a worker cancelled while idle leaves a done future)
                waiter.set_result(schedule)
                return
        task = asyncio.get_running_loop().create_task(self._work(schedule),
                                                      name="poll worker")
        self._workers.add(task)
        task.add_done_callback(self._workers.discard)

    async def _work(self, schedule: _Schedule) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._poll(schedule)
            finally:
                self._busy -= 1
            if not self._running or len(self._idle) >= MAX_IDLE_WORKERS:
                return
            waiter: asyncio.Future[_Schedule] = loop.create_future()
            self._idle.append(waiter)
            schedule = await waiter

    async def _poll(self, schedule: _Schedule) -> None:
        link = schedule.link
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            sample = await link.poll()
        except LinkError as exc:
            self._poll_failed.observe(loop.time() - started)
            self.fleet.record_failure(link.siren_id, exc)
        except Exception as exc:  # never let one siren's surprise end its polling
            log.exception("poll of %s failed unexpectedly", link.siren_id)
            self.fleet.record_failure(link.siren_id, LinkError("internal", repr(exc)))
        else:
            self._poll_ok.observe(loop.time() - started)
            self.fleet.record_sample(sample)
        if not self._running:
            return
        interval_s = schedule.interval_s
        if schedule.first:
            # ... then each siren settles on its own phase of the whole interval, so a large
            # fleet is polled evenly instead of in bursts.
            schedule.due += self._rng.uniform(0, interval_s)
            schedule.first = False
        failures = self.fleet.states[link.siren_id].consecutive_failures
        schedule.due += next_delay(interval_s, failures, self.fleet.polling, self._rng)
        # Fell behind (slow device): poll now, don't burst to catch up.
        schedule.due = max(schedule.due, loop.time())
        schedule.timer = loop.call_at(schedule.due, self._fire, schedule)

    async def _sweep(self) -> None:
        while self._running:
            await asyncio.sleep(1.0)
            self.fleet.sweep()
