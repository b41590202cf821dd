"""Polls every polled (Modbus) siren on its own schedule, with jitter and back-off after failures.

A poll on the wire holds a worker task of its own, so a slow or dead device only ever delays
itself (on a shared RS-485 line it costs its timeout, which the back-off keeps rare). Polls are
scheduled on a fixed grid rather than "interval after the last answer", so the rate stays true
under load; their timers are coalesced into short slots (TIMER_SLOT_S) to wake the loop less.

The poller is the only one that asks a polled siren for its status: an activation that needs a
fresh answer (a read-back after a lost reply, a confirmation) asks the poller for one
(`poll_now`), which takes the siren's next poll early instead of adding a second stream of polls
to the device, and the answer reaches the fleet the way every poll's does.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable

from siren_gateway.config.site import PollingConfig
from siren_gateway.links.base import SirenLink
from siren_gateway.live.fleet import Fleet
from siren_gateway.metrics import Instruments
from siren_gateway.model import LinkError, Sample
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

    __slots__ = ("due", "early", "first", "interval_s", "link", "timer", "wanted")

    def __init__(self, link: SirenLink, interval_s: float) -> None:
        self.link = link
        self.interval_s = interval_s
        self.due = 0.0
        self.first = True
        self.timer: asyncio.Handle | None = None  # waiting for its next poll
        # Callers of poll_now waiting for the outcome of a poll that starts after they asked.
        self.wanted: list[asyncio.Future[Sample | LinkError]] = []
        self.early = False  # this poll was taken before its due time, for a poll_now


# Workers kept waiting for the next due poll; one more poll at once starts another task.
MAX_IDLE_WORKERS = 32

# Timer coalescing (an OS's timer slack, for polls): a poll's timer fires at the end of the
# slot its due time falls in, so polls due close together start in one wake-up of the loop
# and their answers tend to arrive together. Each wake-up after a sleep runs on cold caches:
# at 1,000 sirens polled every 10 s this took the process from 1.8 to 1.15 wake-ups a poll
# and its user CPU per poll from ~500 to ~350 us (bench/poll_throughput.py). The timetable
# itself (`due`) is not rounded, so a poll is at most one slot late and never drifts.
TIMER_SLOT_S = 0.025


def _slot(due: float) -> float:
    return math.ceil(due / TIMER_SLOT_S) * TIMER_SLOT_S


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
                 instruments: Instruments | None = None, seed: int | None = None,
                 owns: Callable[[str], bool] | None = None) -> None:
        self.fleet = fleet
        # In a cluster, whether this node may poll a siren now (cluster/membership.py); its
        # timetable is kept either way, so a siren it gains is polled at once.
        self._owns = owns
        self.skipped_not_owned = 0
        instruments = instruments or Instruments()
        self._poll_ok = instruments.poll_ok
        self._poll_failed = instruments.poll_failed
        self.links = links
        self._rng = random.Random(seed)
        self._schedules: list[_Schedule] = []
        self._by_siren: dict[str, _Schedule] = {}
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
            schedule.timer = loop.call_at(_slot(schedule.due), self._fire, schedule)
            self._schedules.append(schedule)
            self._by_siren[siren_id] = schedule
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
        for schedule in self._schedules:
            _answer(schedule.wanted, LinkError("stopped", "the gateway is stopping"))
        self._workers.clear()
        self._idle.clear()
        self._schedules.clear()
        self._by_siren.clear()
        self._sweeper = None

    def scheduled(self) -> int:
        """Sirens with a poll waiting or on the wire (every polled siren, while running)."""
        return sum(1 for s in self._schedules if s.timer is not None) + self._busy

    def poll_soon(self, siren_ids: set[str]) -> None:
        """Take these sirens' next polls now (this node just gained them)."""
        for siren_id in siren_ids:
            schedule = self._by_siren.get(siren_id)
            if schedule is not None and schedule.timer is not None and self._running:
                schedule.timer.cancel()
                self._fire(schedule)

    async def poll_now(self, siren_id: str) -> Sample | LinkError:
        """The outcome of a poll of this siren that starts after this call: its next poll,
        taken now if it was waiting for its time, or right after the one on the wire (whose
        request may predate the caller's command). The regular timetable is kept."""
        schedule = self._by_siren.get(siren_id)
        if schedule is None or not self._running:
            return LinkError("stopped", "the siren is not being polled")
        waiter: asyncio.Future[Sample | LinkError] = asyncio.get_running_loop().create_future()
        schedule.wanted.append(waiter)
        if schedule.timer is not None:  # waiting for its time: take it now
            schedule.timer.cancel()
            schedule.early = True
            self._fire(schedule)
        return await waiter

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
        # Who asked before this request went out; later askers wait for the next one.
        served = schedule.wanted
        if served:
            schedule.wanted = []
        outcome: Sample | LinkError
        if self._owns is not None and not self._owns(link.siren_id):
            self.skipped_not_owned += 1
            _answer(served, LinkError("not_owner", "another gateway node owns this siren"))
            self._advance(schedule, loop.time())
            schedule.early = False
            schedule.timer = loop.call_at(_slot(schedule.due), self._fire, schedule)
            return
        try:
            outcome = await link.poll()
        except LinkError as exc:
            self._poll_failed.observe(loop.time() - started)
            self.fleet.record_failure(link.siren_id, exc)
            outcome = exc
        except asyncio.CancelledError:
            _answer(served, LinkError("stopped", "the gateway is stopping"))
            raise
        except Exception as exc:  # never let one siren's surprise end its polling
            log.exception("poll of %s failed unexpectedly", link.siren_id)
            outcome = LinkError("internal", repr(exc))
            self.fleet.record_failure(link.siren_id, outcome)
        else:
            self._poll_ok.observe(loop.time() - started)
            self.fleet.record_sample(outcome)
        if served:
            _answer(served, outcome)
        if not self._running:
            return
        # A poll taken early for poll_now stands in for nobody: the regular one still comes
        # on time. One that ran into its due time counts as the regular poll.
        if not (schedule.early and schedule.due > loop.time()):
            self._advance(schedule, loop.time())
        if schedule.wanted:  # asked again while this poll was on the wire: poll again now
            schedule.early = True
            schedule.timer = loop.call_soon(self._fire, schedule)
        else:
            schedule.early = False
            schedule.timer = loop.call_at(_slot(schedule.due), self._fire, schedule)

    def _advance(self, schedule: _Schedule, now: float) -> None:
        interval_s = schedule.interval_s
        if schedule.first:
            # ... then each siren settles on its own phase of the whole interval, so a large
            # fleet is polled evenly instead of in bursts.
            schedule.due += self._rng.uniform(0, interval_s)
            schedule.first = False
        failures = self.fleet.states[schedule.link.siren_id].consecutive_failures
        schedule.due += next_delay(interval_s, failures, self.fleet.polling, self._rng)
        # Fell behind (slow device): poll now, don't burst to catch up.
        schedule.due = max(schedule.due, now)

    async def _sweep(self) -> None:
        while self._running:
            await asyncio.sleep(1.0)
            self.fleet.sweep()


def _answer(waiters: list[asyncio.Future[Sample | LinkError]], outcome: Sample | LinkError
            ) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(outcome)
