"""A cluster node's fence and links, without a database: the branches the cluster's
end-to-end runs (tests/test_cluster.py) reach only by timing luck."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from siren_gateway.cluster.membership import Membership, NodeIdentity
from siren_gateway.cluster.remote import ClusterLink
from siren_gateway.config.cluster import ClusterConfig
from siren_gateway.model import Command, CommandKind, LinkError, Sample

SIREN = "s00001"


class CountingLink:
    """A siren link that only counts what is asked of it."""

    siren_id = SIREN
    polled = True
    sequence_readback = True
    idempotent_resend = False
    timeout_s = 0.5

    def __init__(self) -> None:
        self.polls = 0
        self.sends = 0

    async def poll(self) -> Sample:
        self.polls += 1
        return Sample(SIREN, datetime.now(UTC), {"state": "idle"})

    async def send(self, command: Command) -> None:
        self.sends += 1

    def progress(self, command_id: str) -> str | None:
        return None


@pytest.fixture
def membership() -> Iterator[Membership]:
    # The database is never reached: nothing here runs a heartbeat.
    member = Membership("postgresql://unused@127.0.0.1:1/unused",
                        NodeIdentity("a", "http://127.0.0.1:1"), [SIREN], ClusterConfig())
    yield member
    member.database._thread.shutdown()


def _own(membership: Membership, valid_for_s: float) -> None:
    membership._owned = {SIREN}
    membership._valid_until = time.monotonic() + valid_for_s


async def test_a_read_back_on_a_node_that_just_gained_the_siren_never_polls_it_itself(
        membership: Membership) -> None:
    """The read-back asked the owner, and this node became the owner meanwhile. Its poller is
    the only one that polls the siren (a poll ordered after a command rests on it), so the
    link must refuse with not_owner, put nothing on the wire, and let the next look go
    through the poller."""
    local = CountingLink()
    link = ClusterLink(local, membership, "s" * 16, lambda: pytest.fail("no owner to ask"))
    _own(membership, 60)
    with pytest.raises(LinkError) as refused:
        await link.poll_via_owner()
    assert refused.value.reason == "not_owner"
    assert local.polls == 0 and local.sends == 0
    assert (await link.poll()).siren_id == SIREN and local.polls == 1  # the poller's own path


async def test_a_node_past_its_lease_refuses_before_anything_goes_on_the_wire(
        membership: Membership) -> None:
    local = CountingLink()
    link = ClusterLink(local, membership, "s" * 16, lambda: pytest.fail("no owner to ask"))
    _own(membership, -0.1)  # the lease ran out; the fence timer has not fired yet
    for attempt in (link.poll(), link.send_here(Command(CommandKind.STOP))):
        with pytest.raises(LinkError) as refused:
            await attempt
        assert refused.value.reason == "not_owner"
    with pytest.raises(LinkError) as refused:  # and nobody else is known to own it
        await link.send(Command(CommandKind.STOP))
    assert refused.value.reason == "no_owner"
    assert local.polls == 0 and local.sends == 0


@pytest.mark.parametrize("beat_running", [True, False])
async def test_the_fence_says_why_it_fired(membership: Membership, beat_running: bool,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """An operator reading a fence must tell a slow database (a heartbeat still running)
    from a stalled event loop (the fence's own timer late)."""
    loop = asyncio.get_running_loop()
    gained: list[tuple[set[str], set[str]]] = []
    membership.on_ownership(lambda won, lost: gained.append((set(won), set(lost))))
    membership._set_owned({SIREN})
    membership._valid_until = loop.time() - 0.4  # the timer ran 0.4 s late
    membership._beat_started = loop.time() - 2.5 if beat_running else None
    with caplog.at_level(logging.ERROR, logger="siren_gateway.cluster.membership"):
        membership._drop_all("lease not renewed")
    [line] = [r.getMessage() for r in caplog.records if "fenced" in r.getMessage()]
    assert "fenced (lease not renewed)" in line and "1 sirens" in line
    if beat_running:
        running = re.search(r"a heartbeat running for (\d+\.\d+) s", line)
        assert running is not None and float(running.group(1)) >= 2.5, line
    else:
        assert "no heartbeat running" in line
    late = re.search(r"the fence's timer (\d+\.\d+) s late", line)
    assert late is not None and float(late.group(1)) >= 0.4, line
    assert membership.fenced == 1 and not membership.owns(SIREN)
    assert gained[-1] == (set(), {SIREN})  # the pollers were told to stop


async def test_stopping_drops_the_sirens_without_counting_a_fence(
        membership: Membership, caplog: pytest.LogCaptureFixture) -> None:
    _own(membership, 60)
    with caplog.at_level(logging.ERROR, logger="siren_gateway.cluster.membership"):
        membership._drop_all("stopping")
    assert membership.fenced == 0 and not membership.owns(SIREN)
    assert not [r for r in caplog.records if "fenced" in r.getMessage()]
