"""The one interface every device link implements, whatever the protocol underneath."""

from __future__ import annotations

from typing import Protocol

from siren_gateway.model import Command, Sample


class SirenLink(Protocol):
    """Talks to one siren controller. Raises LinkError when the device gives no usable answer."""

    siren_id: str
    # True when poll() asks the device; False when the device reports by itself and poll()
    # returns its latest report (which the link's owner already gave the fleet).
    polled: bool

    async def poll(self) -> Sample:
        """Read the controller's current status."""
        ...

    async def send(self, command: Command) -> None:
        """Deliver a command; returns once the controller has accepted it."""
        ...
