"""One look at a siren's present status, the same for every link: how a command's outcome is read.

A polled link (Modbus) is asked, and its answer (or failure) goes to the fleet as any poll's
would; a reporting link (MQTT) has nothing to ask, so its latest report counts if it is newer
than the moment of interest, and the wait for the next one ends as soon as it arrives.
"""

from __future__ import annotations

import asyncio

from siren_gateway.links.base import SirenLink
from siren_gateway.live.fleet import Fleet
from siren_gateway.model import LinkError, Sample


async def look(fleet: Fleet, link: SirenLink, since: float) -> tuple[Sample | None, str]:
    """The siren's status now (newer than `since`, epoch seconds), or None and why not."""
    if link.polled:
        try:
            sample = await link.poll()
        except LinkError as exc:
            fleet.record_failure(link.siren_id, exc)
            return None, f"siren not answering ({exc.reason})"
        fleet.record_sample(sample)
        return sample, ""
    latest = fleet.states[link.siren_id].sample
    if latest is not None and latest.received_at.timestamp() >= since:
        return latest, ""
    return None, "no report since"


async def pause(fleet: Fleet, link: SirenLink, poll_interval_s: float, remaining_s: float
                ) -> None:
    """Until the next look is worth taking: a poll interval, or the siren's next report."""
    if remaining_s <= 0:
        return
    if link.polled:
        await asyncio.sleep(min(poll_interval_s, remaining_s))
    else:
        await fleet.wait_for_news(link.siren_id, remaining_s)
