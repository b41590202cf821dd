"""One look at a siren's present status, the same for every link: how a command's outcome is read.

A polled link (Modbus) is asked through the poller, whose answer (or failure) reaches the fleet
as every poll's does; a reporting link (MQTT) has nothing to ask, so its latest report counts if
it is newer than the moment of interest, and the wait for the next one ends as soon as it
arrives. Nothing here writes the live picture.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from siren_gateway.links.base import SirenLink
from siren_gateway.links.poller import Poller
from siren_gateway.live.fleet import Fleet
from siren_gateway.model import LinkError, Sample


class StatusReader:
    def __init__(self, fleet: Fleet, poller: Poller,
                 owns: Callable[[str], bool] | None = None,
                 ask_owner: Callable[[SirenLink], Awaitable[Sample]] | None = None) -> None:
        self.fleet = fleet
        self.poller = poller
        # A cluster node asks only the sirens it owns; another node's siren is seen through
        # its owner's answers as mirrored here (cluster/live.py), like a reporting siren's,
        # except for a read-back, which its owner is asked for (cluster/remote.py).
        self._owns = owns
        self._ask_owner = ask_owner

    def _asks(self, link: SirenLink) -> bool:
        return link.polled and (self._owns is None or self._owns(link.siren_id))

    async def look(self, link: SirenLink, since: float) -> tuple[Sample | None, str]:
        """The siren's status now (newer than `since`, epoch seconds), or None and why not."""
        if self._asks(link):
            outcome = await self.poller.poll_now(link.siren_id)
            if isinstance(outcome, LinkError):
                return None, f"siren not answering ({outcome.reason})"
            return outcome, ""
        latest = self.fleet.states[link.siren_id].sample
        if latest is not None and latest.received_at.timestamp() >= since:
            return latest, ""
        return None, "no report since"

    def _asks_owner(self, link: SirenLink) -> bool:
        return link.polled and self._ask_owner is not None and not self._asks(link)

    async def read_back(self, link: SirenLink, since: float) -> tuple[Sample | None, str]:
        """Which command the siren carried out, from a status taken after this call and
        after `since`: asked of the device (through its owner if another node owns it), or a
        reporting siren's latest report. Never a mirrored poll, which may predate a command
        still on its way to the siren."""
        if self._ask_owner is not None and self._asks_owner(link):
            try:
                return await self._ask_owner(link), ""
            except LinkError as exc:
                return None, f"siren not answering through its owner ({exc.reason})"
        return await self.look(link, since)

    async def pause(self, link: SirenLink, poll_interval_s: float, remaining_s: float,
                    read_back: bool = False) -> None:
        """Until the next look is worth taking: a poll interval, or the siren's next report."""
        if remaining_s <= 0:
            return
        if self._asks(link) or (read_back and self._asks_owner(link)):
            await self.fleet.clock.sleep(min(poll_interval_s, remaining_s))
        else:
            await self.fleet.wait_for_news(link.siren_id, remaining_s)
