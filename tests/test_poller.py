"""Poll scheduling and shutdown, with links that misbehave in ways real libraries do."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from simulators.sitegen import generate_site, write_site
from siren_gateway.config.loading import load_site
from siren_gateway.config.site import PollingConfig
from siren_gateway.links.base import SirenLink
from siren_gateway.links.poller import Poller, next_delay
from siren_gateway.live.bus import Bus
from siren_gateway.live.fleet import Fleet
from siren_gateway.model import Command, LinkError, Sample, utc_now
from tests.conftest import wait_until


class CancelSwallowingLink:
    """Answers polls, but once drops a cancellation the way Python 3.11's wait_for can."""

    polled = True
    sequence_readback = True
    idempotent_resend = False
    timeout_s = 1.0

    def progress(self, command_id: str) -> str | None:
        return None

    def __init__(self, siren_id: str) -> None:
        self.siren_id = siren_id
        self.swallowed = 0
        self.polls = 0

    async def poll(self) -> Sample:
        self.polls += 1
        try:
            await asyncio.sleep(0.5)  # longer than the interval: a cancel lands in here
        except asyncio.CancelledError:
            if self.swallowed == 0:
                self.swallowed += 1  # the reply "arrived" with the cancel: return it instead
            else:
                raise
        return Sample(self.siren_id, utc_now(), {"state": "idle"})

    async def send(self, command: Command) -> None:
        raise NotImplementedError


async def test_stop_finishes_even_when_a_cancellation_is_swallowed(tmp_path: Path) -> None:
    site = load_site(write_site(generate_site(3, poll_interval_s=0.05), tmp_path / "s.yaml"))
    fleet = Fleet(site.catalogue, site.config.polling, site.config.mqtt, Bus())
    links: dict[str, SirenLink] = {s.id: CancelSwallowingLink(s.id) for s in site.config.sirens}
    poller = Poller(fleet, links, seed=1)
    await poller.start()
    await asyncio.sleep(0.3)
    await asyncio.wait_for(poller.stop(), timeout=5)
    assert sum(link.swallowed for link in links.values()) >= 1  # type: ignore[attr-defined]
    counts = [link.polls for link in links.values()]  # type: ignore[attr-defined]
    await asyncio.sleep(0.2)
    assert [link.polls for link in links.values()] == counts  # type: ignore[attr-defined]


def test_back_off_starts_after_the_offline_threshold_and_is_capped() -> None:
    polling = PollingConfig(offline_after_failures=3, backoff_max_s=30, jitter_fraction=0)
    rng = random.Random(0)
    delays = [next_delay(2.0, failures, polling, rng) for failures in range(8)]
    assert delays == [2.0, 2.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


class HangingLink(CancelSwallowingLink):
    """A device that takes the request and never answers (pymodbus's timeout, made endless)."""

    async def poll(self) -> Sample:
        self.polls += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_hung_polls_hold_only_their_own_workers(tmp_path: Path) -> None:
    """More hung devices than idle workers are kept: each holds one worker, the healthy keep
    their rate, and stop() ends the hung polls too."""
    site = load_site(write_site(generate_site(50, poll_interval_s=0.05), tmp_path / "s.yaml"))
    fleet = Fleet(site.catalogue, site.config.polling, site.config.mqtt, Bus())
    ids = [s.id for s in site.config.sirens]
    hung = set(ids[:40])
    links: dict[str, SirenLink] = {
        i: HangingLink(i) if i in hung else CancelSwallowingLink(i) for i in ids}
    poller = Poller(fleet, links, seed=1)
    await poller.start()
    healthy = [links[i] for i in ids if i not in hung]

    await wait_until(lambda: all(link.polls >= 5 for link in healthy)  # type: ignore[attr-defined]
                     and all(links[i].polls == 1 for i in hung),  # type: ignore[attr-defined]
                     20, "healthy sirens polled on while the hung ones wait")
    assert poller.scheduled() == 50  # every siren: a poll waiting or on the wire
    assert all(links[i].polls == 1 for i in hung)  # type: ignore[attr-defined]
    await asyncio.wait_for(poller.stop(), timeout=5)
    assert poller.scheduled() == 0


class GatedLink(CancelSwallowingLink):
    """Answers each poll when the test opens the gate, numbering its answers."""

    def __init__(self, siren_id: str) -> None:
        super().__init__(siren_id)
        self.gate = asyncio.Event()
        self.gate.set()

    async def poll(self) -> Sample:
        self.polls += 1
        number = self.polls
        await self.gate.wait()
        return Sample(self.siren_id, utc_now(), {"state": "idle", "n": number})


async def _one_gated_siren(tmp_path: Path, interval_s: float
                           ) -> tuple[Fleet, GatedLink, Poller]:
    site = load_site(write_site(generate_site(1, poll_interval_s=interval_s),
                                tmp_path / "s.yaml"))
    fleet = Fleet(site.catalogue, site.config.polling, site.config.mqtt, Bus())
    link = GatedLink(site.config.sirens[0].id)
    poller = Poller(fleet, {link.siren_id: link}, seed=1)
    await poller.start()
    return fleet, link, poller


async def test_poll_now_takes_the_next_poll_early_and_keeps_the_timetable(tmp_path: Path
                                                                          ) -> None:
    """An activation's request for a fresh answer is one poll, not a second stream of polls:
    each request costs one poll, the answer reaches the fleet, and the regular poll still
    comes on its own time."""
    fleet, link, poller = await _one_gated_siren(tmp_path, interval_s=3.0)
    try:
        for n in range(1, 4):
            outcome = await poller.poll_now(link.siren_id)
            assert isinstance(outcome, Sample) and outcome.values["n"] == n
            assert fleet.states[link.siren_id].sample is outcome
        assert link.polls == 3
        assert poller.scheduled() == 1  # the regular poll is still waiting for its time
        await wait_until(lambda: link.polls == 4, 10, "the regular poll came on its own")
    finally:
        await poller.stop()


async def test_poll_now_during_a_poll_waits_for_one_that_starts_after_it(tmp_path: Path
                                                                         ) -> None:
    """A poll already on the wire may have been asked before the caller's command went out:
    its answer goes to those who asked before it started, the later caller gets the next."""
    _, link, poller = await _one_gated_siren(tmp_path, interval_s=60.0)
    try:
        link.gate.clear()
        first = asyncio.create_task(poller.poll_now(link.siren_id))
        await wait_until(lambda: link.polls == 1, 5, "the first poll is on the wire")
        second = asyncio.create_task(poller.poll_now(link.siren_id))
        await asyncio.sleep(0)
        link.gate.set()
        one, two = await first, await second
        assert isinstance(one, Sample) and one.values["n"] == 1
        assert isinstance(two, Sample) and two.values["n"] == 2
        assert link.polls == 2
    finally:
        await poller.stop()


async def test_stop_answers_whoever_waits_for_a_poll(tmp_path: Path) -> None:
    _, link, poller = await _one_gated_siren(tmp_path, interval_s=60.0)
    link.gate.clear()
    waiting = asyncio.create_task(poller.poll_now(link.siren_id))
    await wait_until(lambda: link.polls == 1, 5, "the poll is on the wire")
    await asyncio.wait_for(poller.stop(), timeout=5)
    outcome = await asyncio.wait_for(waiting, timeout=1)
    assert isinstance(outcome, LinkError) and outcome.reason == "stopped"
    assert isinstance(await poller.poll_now(link.siren_id), LinkError)


async def test_polls_due_close_together_start_together(tmp_path: Path) -> None:
    """Timer coalescing: each waiting poll's timer is set to the end of the TIMER_SLOT_S slot
    its due time falls in (never before it is due, at most one slot after), so polls due
    close together start in one wake-up of the loop (that cut the gateway's CPU per poll by
    a quarter: fewer wake-ups, each with cold caches)."""
    from siren_gateway.links.poller import TIMER_SLOT_S

    site = load_site(write_site(generate_site(200, poll_interval_s=1.0), tmp_path / "s.yaml"))
    fleet = Fleet(site.catalogue, site.config.polling, site.config.mqtt, Bus())
    links: dict[str, SirenLink] = {s.id: GatedLink(s.id) for s in site.config.sirens}
    poller = Poller(fleet, links, seed=1)
    await poller.start()
    try:
        await wait_until(lambda: all(link.polls >= 2 for link in links.values()),  # type: ignore[attr-defined]
                         20, "every siren polled twice")
        timers = [(s.due, s.timer.when()) for s in poller._schedules
                  if isinstance(s.timer, asyncio.TimerHandle)]
        assert len(timers) >= 150  # (the others are on the wire right now)
        for due, when in timers:
            assert due <= when + 1e-9 < due + TIMER_SLOT_S + 1e-6
            assert abs(when / TIMER_SLOT_S - round(when / TIMER_SLOT_S)) < 1e-6
        # 200 sirens polled about once a second: ~40 slots a second, several polls in each
        slots = {round(when / TIMER_SLOT_S) for _, when in timers}
        span = max(slots) - min(slots) + 1
        assert len(slots) <= span and len(timers) >= 3 * len(slots)
    finally:
        await asyncio.wait_for(poller.stop(), timeout=5)
