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
    # The device reports the sequence of the last command it carried out, so a command whose
    # reply was lost can be read back before anything is sent again.
    sequence_readback: bool
    # Sending the same command object twice makes the device act once (MQTT command ids).
    idempotent_resend: bool

    @property
    def timeout_s(self) -> float:
        """How long one request (or an acknowledgement) may take before it counts as lost."""
        ...

    async def poll(self) -> Sample:
        """Read the controller's current status."""
        ...

    async def send(self, command: Command) -> None:
        """Deliver a command; returns once the controller has accepted it."""
        ...

    def progress(self, command_id: str) -> str | None:
        """What the device last said of a command after accepting it (sounding, finished,
        failed), for links whose devices say so (MQTT); None otherwise."""
        ...
