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
from siren_gateway.model import Command, Sample, utc_now
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
    fleet = Fleet(site, Bus())
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
    fleet = Fleet(site, Bus())
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
